//! Sending a request over an instance's pool: a pooled connection or a
//! new one, the exchange, one replay when a kept-alive connection turns out
//! closed, and which side a failure is the fault of.

use crate::ops::metrics::UpstreamErrorKind;
use crate::upstream::h1::body::{ClientFault, LimitedBody};
use crate::upstream::h1::response::UpstreamBody;
use crate::upstream::h1::{self, ExchangeError};
use crate::upstream::pool::{Conn, ConnPool, OpenError, TlsDial};
use crate::upstream::tls::HandshakeError;
use http::{HeaderName, HeaderValue, Method, Request, Response};
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened.
    #[error("connecting to {target}: {source}")]
    Connect {
        /// The instance address.
        target: String,
        /// The cause.
        source: io::Error,
    },
    /// The TLS handshake with an `https://` instance failed (its
    /// certificate refused, or the handshake broken off): a connect failure
    /// of the upstream's, never plaintext instead.
    #[error("connecting to {target}: {source}")]
    Tls {
        /// The instance address.
        target: String,
        /// The cause.
        source: HandshakeError,
    },
    /// The exchange failed.
    #[error("exchange with {target}: {source}")]
    Exchange {
        /// The instance address.
        target: String,
        /// The cause.
        source: ExchangeError,
    },
}

/// A new connection to the pool's instance, within `connect_timeout`,
/// secured by `tls` when given.
async fn connect(
    pool: &ConnPool,
    connect_timeout: Duration,
    tls: Option<TlsDial<'_>>,
) -> Result<Conn, SendError> {
    pool.open(connect_timeout, tls).await.map_err(|e| match e {
        OpenError::Connect(source) => SendError::Connect {
            target: pool.target().to_string(),
            source,
        },
        OpenError::Tls(source) => SendError::Tls {
            target: pool.target().to_string(),
            source,
        },
    })
}

/// Whether a request may be sent again after a kept-alive connection
/// turned out closed: a safe method whose body is still at hand (none, or
/// read whole). Such a request either did not reach the instance or changes
/// nothing there when it is repeated.
fn replay(method: &Method, body: &LimitedBody) -> Option<LimitedBody> {
    if !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) {
        return None;
    }
    match body {
        LimitedBody::Buffered { data } => Some(LimitedBody::Buffered { data: data.clone() }),
        streaming if http_body::Body::is_end_stream(streaming) => {
            Some(LimitedBody::buffered(bytes::Bytes::new()))
        }
        LimitedBody::Streaming { .. } => None,
    }
}

/// Sends `req` (origin-form URI, `Host` set) over a pooled connection, or a
/// new one opened within `connect_timeout`. The response body streams from
/// the connection, which returns to the pool once that body is read. When a
/// reused connection turns out closed by the instance before any answer, a
/// request that can be replayed (see [`replay`]) is sent once more on a
/// fresh connection. The exchange's tests call it; the gateway itself sends
/// through [`send_with`] from the attempt function.
#[cfg(test)]
pub async fn send(
    pool: &Arc<ConnPool>,
    connect_timeout: Duration,
    req: Request<LimitedBody>,
) -> Result<Response<UpstreamBody>, SendError> {
    send_with(pool, connect_timeout, None, req, &[]).await
}

/// [`send`] with `extra` header fields written after the request's own
/// (the proxy's forwarding headers, see [`crate::headers::Forwarding`]),
/// and new connections secured by `tls` (an `https://` instance).
pub async fn send_with(
    pool: &Arc<ConnPool>,
    connect_timeout: Duration,
    tls: Option<TlsDial<'_>>,
    req: Request<LimitedBody>,
    extra: &[(&HeaderName, &HeaderValue)],
) -> Result<Response<UpstreamBody>, SendError> {
    let (parts, mut body) = req.into_parts();
    loop {
        let (conn, reused) = match pool.checkout() {
            Some(conn) => (conn, true),
            // Boxed: opening a connection is the rare path, and its future
            // would otherwise make every request's future larger (and every
            // move of it costlier).
            None => (Box::pin(connect(pool, connect_timeout, tls)).await?, false),
        };
        let again = if reused {
            replay(&parts.method, &body)
        } else {
            None
        };
        match h1::exchange(conn, &parts, extra, body, pool).await {
            Ok(response) => return Ok(response),
            Err(err) => match again {
                Some(replayed) if err.is_closed() => body = replayed,
                _ => {
                    return Err(SendError::Exchange {
                        target: pool.target().to_string(),
                        source: err,
                    })
                }
            },
        }
    }
}

/// Which side a failed exchange is the fault of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The client's request body failed (over the limit, malformed, cut
    /// short): answered to the client, never counted against the upstream.
    Client(ClientFault),
    /// The upstream could not be reached or did not answer.
    Upstream(UpstreamErrorKind),
}

/// Classifies a failed exchange.
pub fn classify(err: &SendError) -> Failure {
    match err {
        SendError::Connect { source, .. } => Failure::Upstream(match source.kind() {
            io::ErrorKind::ConnectionRefused => UpstreamErrorKind::ConnectRefused,
            io::ErrorKind::TimedOut => UpstreamErrorKind::ConnectTimeout,
            _ => UpstreamErrorKind::Connect,
        }),
        SendError::Tls { .. } => Failure::Upstream(UpstreamErrorKind::Tls),
        SendError::Exchange { source, .. } => match source {
            ExchangeError::Body(body) => Failure::Client(body.fault()),
            _ => Failure::Upstream(UpstreamErrorKind::Protocol),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_and_timed_out_connects_are_told_apart() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let pool = ConnPool::new(closed.to_string());
        let err = connect(&pool, Duration::from_secs(2), None)
            .await
            .unwrap_err();
        assert_eq!(
            classify(&err),
            Failure::Upstream(UpstreamErrorKind::ConnectRefused)
        );
        let timed_out = SendError::Connect {
            target: "x:1".into(),
            source: io::Error::new(io::ErrorKind::TimedOut, "slow"),
        };
        assert_eq!(
            classify(&timed_out),
            Failure::Upstream(UpstreamErrorKind::ConnectTimeout)
        );
    }
}
