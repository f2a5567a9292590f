//! Upstream connections: a keep-alive pool per instance, of the
//! connections HTTP/1.1 exchanges go over (see [`crate::upstream::h1`]).
//!
//! A checkout is a pop from the instance's own idle stack (no hashing of a
//! pool key), and a connection goes back to the stack as soon as its
//! response body has been read to its end.

use bytes::BytesMut;
use std::io;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
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
    pub(crate) stream: TcpStream,
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
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            bufs: Buffers::default(),
        }
    }

    /// Whether an idle connection can carry a request: the instance has
    /// neither closed it nor sent anything unasked. Costs no system call
    /// unless the socket turned readable while idle.
    pub fn is_reusable(&self) -> bool {
        let stream = &self.stream;
        let mut cx = Context::from_waker(Waker::noop());
        match stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut byte = [0u8; 1];
                matches!(stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
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

    /// Opens a new connection within `connect_timeout`.
    pub(crate) async fn open(&self, connect_timeout: Duration) -> io::Result<Conn> {
        let stream =
            match tokio::time::timeout(connect_timeout, TcpStream::connect(&*self.target)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no connection within {} ms", connect_timeout.as_millis()),
                    ))
                }
            };
        stream.set_nodelay(true)?;
        Ok(Conn::new(stream))
    }
}
