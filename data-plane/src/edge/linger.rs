//! Lingering close (RFC 9112 section 9.6) of a client connection.
//!
//! When the gateway answers before it has read the request body (a 413 from
//! the declared `Content-Length`, a 401, a 404) the connection cannot be kept
//! alive, and closing a socket that still has unread bytes makes the kernel
//! send a reset. A client that writes its whole body before reading (Python's
//! `http.client`, `requests`, `urllib`) then sees a broken pipe instead of the
//! answer. So the close is staged: the answer is written, the write side is
//! shut down (the client sees the answer end), and what the client still
//! sends is read and thrown away until it closes, for a bounded time and
//! size, before the socket is dropped.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Longest time a connection lingers (nginx's `lingering_time`).
pub const LINGER_TIME: Duration = Duration::from_secs(30);
/// Longest wait for the client's next bytes (nginx's `lingering_timeout`).
pub const LINGER_IDLE: Duration = Duration::from_secs(5);
/// Most bytes read and discarded while lingering.
pub const LINGER_BYTES: u64 = 64 << 20;

/// A connection's close in progress.
#[derive(Debug)]
pub struct Linger {
    /// Whether the client may still be sending: its last request had a
    /// body, or bytes came after the answer.
    expected: bool,
    discarded: u64,
    until: Instant,
    idle: Pin<Box<Sleep>>,
}

impl Linger {
    /// A close that waits for the client's bytes when `expected`, and
    /// otherwise only drains what is already there.
    pub fn new(expected: bool) -> Self {
        let now = Instant::now();
        Self {
            expected,
            discarded: 0,
            until: now + LINGER_TIME,
            idle: Box::pin(tokio::time::sleep_until(now + LINGER_IDLE)),
        }
    }

    /// Reads and discards from `io` until the client closes, fails, stays
    /// silent for [`LINGER_IDLE`], or the time or size bound is reached.
    /// Ready means the socket may be dropped.
    pub fn poll_drain<S: AsyncRead>(
        &mut self,
        mut io: Pin<&mut S>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let mut scratch = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match io.as_mut().poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {
                    self.expected = true;
                    self.discarded += buf.filled().len() as u64;
                    let now = Instant::now();
                    if self.discarded > LINGER_BYTES || now >= self.until {
                        return Poll::Ready(());
                    }
                    self.idle
                        .as_mut()
                        .reset((now + LINGER_IDLE).min(self.until));
                }
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending if !self.expected => return Poll::Ready(()),
                Poll::Pending => return self.idle.as_mut().poll(cx),
            }
        }
    }
}

/// Shuts down the write side of `io` (once `linger` is set, it has been),
/// then lingers as [`Linger::poll_drain`] says.
pub fn poll_close<S: AsyncRead + AsyncWrite>(
    mut io: Pin<&mut S>,
    linger: &mut Option<Linger>,
    expected: bool,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    let state = match linger {
        Some(state) => state,
        None => {
            if let Err(e) = std::task::ready!(io.as_mut().poll_shutdown(cx)) {
                // Nothing more can reach the client: no reason to wait.
                return Poll::Ready(Err(e));
            }
            linger.insert(Linger::new(expected))
        }
    };
    state.poll_drain(io, cx).map(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_silent_peer_is_not_waited_for_unless_a_body_was_expected() {
        let (_client, server) = tokio::io::duplex(64);
        let mut server = Box::pin(server);
        let mut linger = None;
        poll_fn(|cx| poll_close(server.as_mut(), &mut linger, false, cx))
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_rest_of_a_body_is_read_until_the_client_closes() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = Box::pin(server);
        let writer = tokio::spawn(async move {
            for _ in 0..100 {
                client.write_all(&[b'x'; 100]).await.unwrap();
            }
            // The answer's end reached the client: the write side was shut.
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            drop(client);
        });
        let mut linger = None;
        poll_fn(|cx| poll_close(server.as_mut(), &mut linger, true, cx))
            .await
            .unwrap();
        assert_eq!(linger.unwrap().discarded, 10_000);
        writer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_neither_sends_nor_closes_is_left_after_the_idle_time() {
        let (_client, server) = tokio::io::duplex(64);
        let mut server = Box::pin(server);
        let started = Instant::now();
        let mut linger = None;
        poll_fn(|cx| poll_close(server.as_mut(), &mut linger, true, cx))
            .await
            .unwrap();
        assert_eq!(started.elapsed(), LINGER_IDLE);
    }
}
