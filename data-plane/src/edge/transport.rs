//! What a listener serves HTTP over: the accepted TCP stream itself
//! ([`Plain`]) or a TLS session on it (`edge::tls`), and the facts of the
//! connection each of its requests carries.
//!
//! [`crate::edge::server::serve`] is generic over the [`Handshake`], so the
//! plain listener's stream is the bare `TcpStream` (no box, no dynamic
//! dispatch) and its requests carry nothing: [`Attach`] for `()` does no
//! work.

use crate::connection::TlsConnection;
use http::Request;
use std::future::Future;
use std::task::{Context, Poll};
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

/// The per-connection service that attaches the connection's facts to each
/// request before `S` handles it; for a plain connection, `S` itself once
/// inlined.
#[derive(Debug, Clone)]
pub struct Attached<S, F> {
    inner: S,
    facts: F,
}

impl<S, F> Attached<S, F> {
    /// `inner`, with `facts` attached to every request.
    pub fn new(inner: S, facts: F) -> Self {
        Self { inner, facts }
    }
}

impl<S, F, B> tower::Service<Request<B>> for Attached<S, F>
where
    S: tower::Service<Request<B>>,
    F: Attach,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        self.facts.attach(&mut req);
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Service, ServiceExt};

    #[tokio::test]
    async fn facts_reach_the_request_and_plain_adds_nothing() {
        let seen = tower::service_fn(|req: Request<()>| async move {
            Ok::<_, std::convert::Infallible>(TlsConnection::of(&req).map(|t| t.port().clone()))
        });
        let mut tls = Attached::new(seen, TlsConnection::new(8443, None));
        let port = tls.ready().await.unwrap().call(Request::new(())).await;
        assert_eq!(port.unwrap().unwrap(), "8443");
        let mut plain = Attached::new(seen, ());
        let port = plain.ready().await.unwrap().call(Request::new(())).await;
        assert!(port.unwrap().is_none());
    }
}
