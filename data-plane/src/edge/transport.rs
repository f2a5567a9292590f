//! What a listener serves HTTP over: the accepted TCP stream itself
//! ([`Plain`]) or a TLS session on it (`edge::tls`), and the facts of the
//! connection each of its requests carries.
//!
//! [`crate::edge::server::serve`] is generic over the [`Handshake`], so the
//! plain listener's stream is the bare `TcpStream` (no box, no dynamic
//! dispatch) and its requests carry nothing: [`Attach`] for `()` does no
//! work. The proxy's per-connection service attaches the facts
//! (`proxy::service`).

use crate::connection::TlsConnection;
use http::Request;
use std::future::Future;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Turns an accepted TCP connection into the stream HTTP is served on.
pub trait Handshake: Send + Sync + 'static {
    /// The stream HTTP is served on.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// What every request of the connection carries.
    type Facts: Attach;

    /// The connection's stream and facts, or `None` when it failed to set
    /// up (counted and logged by the implementation).
    fn handshake(
        &self,
        tcp: TcpStream,
    ) -> impl Future<Output = Option<(Self::Stream, Self::Facts)>> + Send + 'static;
}

/// Facts of a connection that each of its requests carries (as a request
/// extension).
pub trait Attach: Clone + Send + Sync + 'static {
    /// Attaches the facts to `req`.
    fn attach<B>(&self, req: &mut Request<B>);
}

/// A plain connection's requests carry nothing.
impl Attach for () {
    #[inline(always)]
    fn attach<B>(&self, _: &mut Request<B>) {}
}

impl Attach for TlsConnection {
    #[inline]
    fn attach<B>(&self, req: &mut Request<B>) {
        req.extensions_mut().insert(self.clone());
    }
}

/// Plain HTTP: the TCP stream as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl Handshake for Plain {
    type Stream = TcpStream;
    type Facts = ();

    #[inline]
    fn handshake(
        &self,
        tcp: TcpStream,
    ) -> impl Future<Output = Option<(TcpStream, ())>> + Send + 'static {
        std::future::ready(Some((tcp, ())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_reach_the_request_and_plain_adds_nothing() {
        let mut req = Request::new(());
        TlsConnection::new(8443, None).attach(&mut req);
        assert_eq!(TlsConnection::of(&req).unwrap().port(), "8443");
        let mut plain = Request::new(());
        ().attach(&mut plain);
        assert!(TlsConnection::of(&plain).is_none());
    }
}
