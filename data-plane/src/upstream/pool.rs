//! Upstream connections: a keep-alive pool per instance, HTTP/1.1 exchanges
//! over it (`exchange`), and how failures map to gateway errors.
//!
//! A checkout is a pop from the instance's own idle stack (no hashing of a
//! pool key), and a connection goes back to the stack as soon as its
//! response body has been read to its end.

use crate::ops::metrics::UpstreamErrorKind;
use crate::upstream::h1::body::{ClientFault, LimitedBody};
use crate::upstream::h1::{self, Conn, ExchangeError, UpstreamBody};
use http::{HeaderName, HeaderValue, Method, Request, Response};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// How long an idle pooled connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Keep-alive connections to one instance.
pub struct ConnPool {
    /// `host:port` to connect to.
    target: String,
    idle: Mutex<Vec<Idle>>,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool")
            .field("target", &self.target)
            .field("idle", &self.lock().len())
            .finish()
    }
}

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
    /// The exchange failed.
    #[error("exchange with {target}: {source}")]
    Exchange {
        /// The instance address.
        target: String,
        /// The cause.
        source: ExchangeError,
    },
}

impl ConnPool {
    /// An empty pool for `target` (`host:port`).
    pub fn new(target: String) -> Self {
        Self {
            target,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The instance address.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Idle connections held.
    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle connection that is still open.
    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.lock();
        while let Some(entry) = idle.pop() {
            if entry.since.elapsed() > POOL_IDLE_TIMEOUT {
                // Everything below is older still.
                idle.clear();
                return None;
            }
            if entry.conn.is_reusable() {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Takes back a connection whose exchange is complete.
    pub(crate) fn checkin(&self, conn: Conn) {
        let now = Instant::now();
        let mut idle = self.lock();
        if idle
            .first()
            .is_some_and(|oldest| now.saturating_duration_since(oldest.since) > POOL_IDLE_TIMEOUT)
        {
            idle.remove(0);
        }
        idle.push(Idle { conn, since: now });
    }

    async fn connect(&self, connect_timeout: Duration) -> Result<Conn, SendError> {
        let connect_error = |source| SendError::Connect {
            target: self.target.clone(),
            source,
        };
        let stream =
            match tokio::time::timeout(connect_timeout, TcpStream::connect(&*self.target)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(connect_error(e)),
                Err(_) => {
                    return Err(connect_error(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no connection within {} ms", connect_timeout.as_millis()),
                    )))
                }
            };
        stream.set_nodelay(true).map_err(connect_error)?;
        Ok(Conn::new(stream))
    }
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
/// fresh connection.
pub async fn send(
    pool: &Arc<ConnPool>,
    connect_timeout: Duration,
    req: Request<LimitedBody>,
) -> Result<Response<UpstreamBody>, SendError> {
    send_with(pool, connect_timeout, req, &[]).await
}

/// [`send`] with `extra` header fields written after the request's own
/// (the proxy's forwarding headers, see [`crate::headers::Forwarding`]).
pub async fn send_with(
    pool: &Arc<ConnPool>,
    connect_timeout: Duration,
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
            None => (Box::pin(pool.connect(connect_timeout)).await?, false),
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
                        target: pool.target.clone(),
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
        let err = pool.connect(Duration::from_secs(2)).await.unwrap_err();
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
