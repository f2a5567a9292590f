//! One connection's TLS handshake on the HTTPS listener: bounded in time,
//! counted (`gateway_tls_handshakes_total`, or
//! `gateway_tls_handshake_failures_total{reason}` with a reason from a
//! small fixed set), and turned into the facts its requests carry.

use super::subject::subject_of;
use crate::connection::TlsConnection;
use crate::edge::transport::{Handshake, Protocol};
use crate::ops::handles::TlsMetrics;
use http::HeaderValue;
use rustls::{AlertDescription, Error as TlsErr, PeerIncompatible};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The client sent nothing, or not all of its handshake, in time.
pub const TIMEOUT: &str = "timeout";
/// No TLS version both sides speak (TLS 1.0/1.1 clients, SSLv3).
pub const PROTOCOL_VERSION: &str = "protocol_version";
/// No cipher suite, key exchange group or signature scheme in common.
pub const NO_SHARED_CIPHER: &str = "no_shared_cipher";
/// A certificate was refused: the client's (not signed by the client CA,
/// expired, ...) by the gateway, or the gateway's by the client.
pub const BAD_CERTIFICATE: &str = "bad_certificate";
/// The client did not speak TLS at all (plain HTTP on the HTTPS port).
pub const NOT_TLS: &str = "not_tls";
/// The client closed or reset the connection during the handshake.
pub const CLOSED: &str = "closed";
/// Anything else.
pub const OTHER: &str = "other";

/// Every reason a failed handshake is counted under.
pub const REASONS: [&str; 7] = [
    TIMEOUT,
    PROTOCOL_VERSION,
    NO_SHARED_CIPHER,
    BAD_CERTIFICATE,
    NOT_TLS,
    CLOSED,
    OTHER,
];

/// The HTTPS listener's handshake, shared by its connections.
#[derive(Clone)]
pub struct TlsHandshake(Arc<Inner>);

struct Inner {
    acceptor: TlsAcceptor,
    timeout: Duration,
    port: u16,
    metrics: TlsMetrics,
}

impl std::fmt::Debug for TlsHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsHandshake")
            .field("timeout", &self.0.timeout)
            .field("port", &self.0.port)
            .finish_non_exhaustive()
    }
}

impl TlsHandshake {
    /// Handshakes with `config` within `timeout`, for the listener on
    /// `port`, counted in `metrics`.
    pub fn new(
        config: Arc<rustls::ServerConfig>,
        timeout: Duration,
        port: u16,
        metrics: TlsMetrics,
    ) -> Self {
        Self(Arc::new(Inner {
            acceptor: TlsAcceptor::from(config),
            timeout,
            port,
            metrics,
        }))
    }
}

impl Handshake for TlsHandshake {
    type Stream = TlsStream<TcpStream>;
    type Facts = TlsConnection;

    fn handshake(
        &self,
        tcp: TcpStream,
    ) -> impl Future<Output = Option<(Self::Stream, TlsConnection, Protocol)>> + Send + 'static
    {
        let inner = self.0.clone();
        async move {
            let peer = tcp.peer_addr().ok();
            let accepted = tokio::time::timeout(inner.timeout, inner.acceptor.accept(tcp)).await;
            let stream = match accepted {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    let reason = classify(&e);
                    inner.metrics.failed(reason);
                    tracing::debug!(?peer, reason, error = %e, "TLS handshake failed");
                    return None;
                }
                Err(_) => {
                    inner.metrics.failed(TIMEOUT);
                    tracing::debug!(?peer, timeout = ?inner.timeout, "TLS handshake timed out");
                    return None;
                }
            };
            inner.metrics.handshakes.inc();
            let subject = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| subject_of(leaf.as_ref()))
                .and_then(|s| HeaderValue::try_from(s).ok());
            // The protocol ALPN agreed on: `h2` when the client offered it
            // (the server's order, `h2` first, decides); HTTP/1.1 when the
            // client offered `http/1.1` only or used no ALPN at all.
            let protocol = match stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => Protocol::H2,
                _ => Protocol::Http1,
            };
            Some((stream, TlsConnection::new(inner.port, subject), protocol))
        }
    }
}

/// The reason a handshake that ended in `error` is counted under.
pub fn classify(error: &std::io::Error) -> &'static str {
    use std::io::ErrorKind;
    let tls = error.get_ref().and_then(|e| e.downcast_ref::<TlsErr>());
    match tls {
        Some(tls) => classify_tls(tls),
        None => match error.kind() {
            ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe => CLOSED,
            _ => OTHER,
        },
    }
}

fn classify_tls(error: &TlsErr) -> &'static str {
    match error {
        TlsErr::PeerIncompatible(why) => match why {
            PeerIncompatible::NoCipherSuitesInCommon
            | PeerIncompatible::NoKxGroupsInCommon
            | PeerIncompatible::NoSignatureSchemesInCommon
            | PeerIncompatible::NoEcPointFormatsInCommon
            | PeerIncompatible::UncompressedEcPointsRequired
            | PeerIncompatible::NoCertificateRequestSignatureSchemesInCommon => NO_SHARED_CIPHER,
            // A hello without signature_algorithms is a TLS 1.0/1.1 one
            // (the extension came with 1.2): rustls notices it first.
            PeerIncompatible::SignatureAlgorithmsExtensionRequired
            | PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::Tls13RequiredForQuic
            | PeerIncompatible::SupportedVersionsExtensionRequired => PROTOCOL_VERSION,
            _ => OTHER,
        },
        TlsErr::InvalidCertificate(_) | TlsErr::NoCertificatesPresented => BAD_CERTIFICATE,
        TlsErr::AlertReceived(alert) => match alert {
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied => BAD_CERTIFICATE,
            AlertDescription::ProtocolVersion => PROTOCOL_VERSION,
            AlertDescription::HandshakeFailure | AlertDescription::InsufficientSecurity => {
                NO_SHARED_CIPHER
            }
            _ => OTHER,
        },
        TlsErr::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => NOT_TLS,
        _ => OTHER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    fn io(e: TlsErr) -> Error {
        Error::new(ErrorKind::InvalidData, e)
    }

    #[test]
    fn errors_map_to_the_fixed_reasons() {
        let cases = [
            (
                io(TlsErr::PeerIncompatible(
                    PeerIncompatible::NoCipherSuitesInCommon,
                )),
                NO_SHARED_CIPHER,
            ),
            (
                io(TlsErr::PeerIncompatible(
                    PeerIncompatible::SupportedVersionsExtensionRequired,
                )),
                PROTOCOL_VERSION,
            ),
            (
                io(TlsErr::PeerIncompatible(
                    PeerIncompatible::SignatureAlgorithmsExtensionRequired,
                )),
                PROTOCOL_VERSION,
            ),
            (
                io(TlsErr::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer,
                )),
                BAD_CERTIFICATE,
            ),
            (
                io(TlsErr::AlertReceived(AlertDescription::UnknownCA)),
                BAD_CERTIFICATE,
            ),
            (
                io(TlsErr::InvalidMessage(
                    rustls::InvalidMessage::InvalidContentType,
                )),
                NOT_TLS,
            ),
            (Error::from(ErrorKind::UnexpectedEof), CLOSED),
            (Error::from(ErrorKind::ConnectionReset), CLOSED),
            (io(TlsErr::DecryptError), OTHER),
            (Error::from(ErrorKind::Other), OTHER),
        ];
        for (error, reason) in cases {
            assert_eq!(classify(&error), reason, "{error:?}");
            assert!(REASONS.contains(&reason));
        }
    }
}
