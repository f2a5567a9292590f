//! What a listener serves HTTP over: the accepted TCP stream itself
//! ([`Plain`]) or a TLS session on it (`edge::tls`), the HTTP version the
//! connection speaks ([`Protocol`]), and the facts of the connection each of
//! its requests carries.
//!
//! [`crate::edge::server::serve`] is generic over the [`Handshake`], so the
//! plain listener's stream is the bare `TcpStream` (no box, no dynamic
//! dispatch) and its requests carry nothing: [`Attach`] for `()` does no
//! work. The proxy's per-connection service attaches the facts
//! (`proxy::service`).
//!
//! The protocol is chosen once per connection, before HTTP is served: by
//! ALPN on the HTTPS listener (`edge::tls`), and on the plain one by peeking
//! (`TcpStream::peek`, nothing consumed) for the HTTP/2 client preface of
//! h2c with prior knowledge ([`sniff`]). An HTTP/1.1 connection is handed on
//! as the same bare `TcpStream`, with no wrapper to replay peeked bytes.

use crate::connection::TlsConnection;
use http::Request;
use std::future::Future;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The HTTP version a connection is served with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (and 1.0): hyper's `http1` server.
    Http1,
    /// HTTP/2: ALPN `h2` over TLS, or h2c with prior knowledge in plain.
    H2,
}

/// Turns an accepted TCP connection into the stream HTTP is served on.
pub trait Handshake: Send + Sync + 'static {
    /// The stream HTTP is served on.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// What every request of the connection carries.
    type Facts: Attach;

    /// The connection's stream, facts and protocol, or `None` when it
    /// failed to set up or closed first (counted and logged by the
    /// implementation).
    fn handshake(
        &self,
        tcp: TcpStream,
    ) -> impl Future<Output = Option<(Self::Stream, Self::Facts, Protocol)>> + Send + 'static;
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

/// Plain HTTP: the TCP stream as it is, HTTP/1.1 unless its first bytes
/// are the HTTP/2 client preface.
#[derive(Debug, Clone, Copy)]
pub struct Plain {
    /// Time a client gets to send the bytes that tell its protocol (the
    /// listener's header-read timeout).
    pub first_bytes: Duration,
}

impl Handshake for Plain {
    type Stream = TcpStream;
    type Facts = ();

    #[inline]
    fn handshake(
        &self,
        tcp: TcpStream,
    ) -> impl Future<Output = Option<(TcpStream, (), Protocol)>> + Send + 'static {
        let within = self.first_bytes;
        async move {
            match tokio::time::timeout(within, sniff(&tcp)).await {
                Ok(Some(protocol)) => Some((tcp, (), protocol)),
                // Closed, failed or silent before its first request: dropped,
                // as hyper would have dropped it.
                Ok(None) | Err(_) => None,
            }
        }
    }
}

/// The client connection preface of HTTP/2 (RFC 9113 section 3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Pause between two peeks while the bytes seen are a strict prefix of the
/// preface (peek returns at once while unread bytes wait, so waiting for
/// readiness would spin).
const PREFACE_PAUSE: Duration = Duration::from_millis(5);

/// The protocol the first bytes of a plain connection speak: HTTP/2 when
/// they are the client preface, HTTP/1.1 as soon as they differ from it
/// (usually the first peek: no request method starts `PR`), `None` when the
/// client closed (or the socket failed) first. Reads nothing: the bytes
/// stay for hyper.
pub async fn sniff(tcp: &TcpStream) -> Option<Protocol> {
    let mut seen = [0u8; H2_PREFACE.len()];
    loop {
        let n = tcp.peek(&mut seen).await.ok()?;
        if n == 0 {
            return None;
        }
        if let Some(protocol) = classify(&seen[..n]) {
            return Some(protocol);
        }
        tokio::time::sleep(PREFACE_PAUSE).await;
    }
}

/// The protocol `seen` (a connection's first bytes, not empty) tells, or
/// `None` while it is a strict prefix of the preface.
pub fn classify(seen: &[u8]) -> Option<Protocol> {
    let n = seen.len().min(H2_PREFACE.len());
    if seen[..n] != H2_PREFACE[..n] {
        Some(Protocol::Http1)
    } else if n == H2_PREFACE.len() {
        Some(Protocol::H2)
    } else {
        None
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

    #[test]
    fn the_preface_alone_makes_a_connection_h2() {
        assert_eq!(classify(H2_PREFACE), Some(Protocol::H2));
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(classify(&more), Some(Protocol::H2));
        for cut in 1..H2_PREFACE.len() {
            assert_eq!(classify(&H2_PREFACE[..cut]), None, "{cut} bytes");
        }
        for http1 in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /a HTTP/1.1\r\n",
            b"PUT",
            b"PATCH",
            b"PRI * HTTP/1.1\r\n",
            b"\x16\x03\x01",
        ] {
            assert_eq!(classify(http1), Some(Protocol::Http1), "{http1:?}");
        }
    }

    #[tokio::test]
    async fn plain_handshake_peeks_and_consumes_nothing() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let plain = Plain {
            first_bytes: Duration::from_secs(5),
        };
        for (sent, want) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], Protocol::Http1),
            (&H2_PREFACE[..], Protocol::H2),
        ] {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (tcp, _) = listener.accept().await.unwrap();
            // The preface in two pieces: the first is a prefix, undecided.
            client.write_all(&sent[..3]).await.unwrap();
            let writer = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                client.write_all(&sent[3..]).await.unwrap();
                client
            });
            let (mut tcp, (), protocol) = plain.handshake(tcp).await.unwrap();
            assert_eq!(protocol, want);
            let _client = writer.await.unwrap();
            let mut got = vec![0u8; sent.len()];
            tcp.read_exact(&mut got).await.unwrap();
            assert_eq!(got, sent);
        }
        // Closed before a byte, or silent past the bound: dropped.
        let client = TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        drop(client);
        assert!(plain.handshake(tcp).await.is_none());
        let _client = TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let quick = Plain {
            first_bytes: Duration::from_millis(50),
        };
        assert!(quick.handshake(tcp).await.is_none());
    }
}
