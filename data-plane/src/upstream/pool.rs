//! Upstream connections: a keep-alive pool per instance, of the
//! connections HTTP/1.1 exchanges go over (see [`crate::upstream::h1`]).
//! The connector opens TCP and, for an `https://` instance, does the TLS
//! handshake, both within the connect timeout; a pooled TLS connection
//! stays TLS and is reused like a plain one.
//!
//! A checkout is a pop from the instance's own idle stack (no hashing of a
//! pool key), and a connection goes back to the stack as soon as its
//! response body has been read to its end.

use crate::upstream::stream::Stream;
use crate::upstream::tls::{HandshakeError, UpstreamTls};
use bytes::BytesMut;
use rustls::pki_types::ServerName;
use std::io;
use std::sync::{Mutex, MutexGuard};
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

/// An idle connection to an instance, as its pool keeps it.
#[derive(Debug)]
pub struct Conn {
    pub(crate) stream: Stream,
    pub(crate) bufs: Buffers,
}

/// A connection's buffers, kept from one exchange to the next.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    /// Bytes read and not consumed yet.
    pub(crate) read: BytesMut,
    /// The request head being written.
    pub(crate) write: Vec<u8>,
    /// Where the last head's fields lie in `read`.
    pub(crate) fields: Vec<[usize; 4]>,
}

impl Conn {
    /// A connection over `stream`.
    pub fn new(stream: Stream) -> Self {
        Self {
            stream,
            bufs: Buffers::default(),
        }
    }

    /// Whether an idle connection can carry a request: the instance has
    /// neither closed it nor sent anything unasked (see
    /// [`Stream::is_reusable`]).
    pub fn is_reusable(&mut self) -> bool {
        self.stream.is_reusable()
    }
}

/// How a new connection to an `https://` instance is secured.
#[derive(Debug, Clone, Copy)]
pub struct TlsDial<'a> {
    /// The service's TLS client; `None` when it has none (the connection
    /// fails rather than fall back to plaintext).
    pub client: Option<&'a UpstreamTls>,
    /// The instance's host, verified unless the service names a
    /// `server_name`.
    pub host: &'a ServerName<'static>,
}

/// Why a new connection failed: TCP, or the TLS handshake after it.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// TCP did not connect (refused, timed out, unreachable).
    #[error(transparent)]
    Connect(#[from] io::Error),
    /// TLS did not handshake.
    #[error(transparent)]
    Tls(#[from] HandshakeError),
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
    pub(crate) fn checkout(&self) -> Option<Conn> {
        let mut idle = self.lock();
        while let Some(mut entry) = idle.pop() {
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

    /// Opens a new connection within `connect_timeout`: TCP, then TLS when
    /// `tls` is given (the handshake within the same timeout).
    pub(crate) async fn open(
        &self,
        connect_timeout: Duration,
        tls: Option<TlsDial<'_>>,
    ) -> Result<Conn, OpenError> {
        let timed_out = || {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {} ms", connect_timeout.as_millis()),
            )
        };
        let deadline = tokio::time::Instant::now() + connect_timeout;
        let stream =
            match tokio::time::timeout_at(deadline, TcpStream::connect(&*self.target)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(OpenError::Connect(e)),
                Err(_) => return Err(OpenError::Connect(timed_out())),
            };
        stream.set_nodelay(true)?;
        let Some(tls) = tls else {
            return Ok(Conn::new(Stream::Plain(stream)));
        };
        let client = tls.client.ok_or(HandshakeError::NoClient(
            "the platform has no trusted root and the service sets no tls.ca_file",
        ))?;
        match tokio::time::timeout_at(deadline, client.handshake(stream, tls.host)).await {
            Ok(Ok(stream)) => Ok(Conn::new(Stream::Tls(Box::new(stream)))),
            Ok(Err(e)) => Err(OpenError::Tls(e)),
            Err(_) => Err(OpenError::Connect(timed_out())),
        }
    }
}
