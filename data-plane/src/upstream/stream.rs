//! The byte stream of a pooled connection: plain TCP, or TLS over TCP for
//! an `https://` instance. An enum rather than a trait object, so the plain
//! path pays one predictable branch per read or write and no allocation or
//! dynamic dispatch; the TLS state (about a kilobyte) is boxed so the plain
//! variant stays small to move.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A connection's stream.
#[derive(Debug)]
pub enum Stream {
    /// Plain HTTP/1.1 over TCP.
    Plain(TcpStream),
    /// HTTP/1.1 over TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

/// The read half of a split [`Stream`].
#[derive(Debug)]
pub enum ReadHalf {
    /// Of a plain stream.
    Plain(OwnedReadHalf),
    /// Of a TLS stream.
    Tls(tokio::io::ReadHalf<Box<TlsStream<TcpStream>>>),
}

/// The write half of a split [`Stream`].
#[derive(Debug)]
pub enum WriteHalf {
    /// Of a plain stream.
    Plain(OwnedWriteHalf),
    /// Of a TLS stream.
    Tls(tokio::io::WriteHalf<Box<TlsStream<TcpStream>>>),
}

impl Stream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref().0,
        }
    }

    /// Whether an idle connection can carry a request: the instance has
    /// neither closed it nor sent anything unasked. Costs no system call
    /// unless the socket turned readable while idle. A TLS stream reads
    /// what came through TLS, so that records which carry no data (a TLS
    /// 1.3 session ticket) do not count as unasked bytes.
    pub fn is_reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self {
            Stream::Plain(stream) => match stream.poll_read_ready(&mut cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                Poll::Ready(Ok(())) => {
                    let mut byte = [0u8; 1];
                    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
            },
            Stream::Tls(tls) => {
                if tls.get_ref().0.poll_read_ready(&mut cx).is_pending() {
                    return true;
                }
                let mut byte = [0u8; 1];
                let mut buf = ReadBuf::new(&mut byte);
                matches!(
                    Pin::new(&mut **tls).poll_read(&mut cx, &mut buf),
                    Poll::Pending
                )
            }
        }
    }

    /// Splits the stream so a request body can go out from a task of its
    /// own while the response is read.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Plain(tcp) => {
                let (r, w) = tcp.into_split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            Stream::Tls(tls) => {
                let (r, w) = tokio::io::split(tls);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
        }
    }
}

impl ReadHalf {
    /// The whole stream again; `None` for halves of different streams.
    pub fn reunite(self, write: WriteHalf) -> Option<Stream> {
        match (self, write) {
            (ReadHalf::Plain(r), WriteHalf::Plain(w)) => r.reunite(w).ok().map(Stream::Plain),
            (ReadHalf::Tls(r), WriteHalf::Tls(w)) if r.is_pair_of(&w) => {
                Some(Stream::Tls(r.unsplit(w)))
            }
            _ => None,
        }
    }
}

impl WriteHalf {
    /// Gives the half up without closing the sending direction (a plain
    /// half would send a FIN when dropped; a TLS half never does).
    pub fn forget(self) {
        match self {
            WriteHalf::Plain(w) => w.forget(),
            WriteHalf::Tls(w) => drop(w),
        }
    }
}

macro_rules! delegate_io {
    ($ty:ident) => {
        impl AsyncRead for $ty {
            #[inline]
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    $ty::Tls(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
}

macro_rules! delegate_write {
    ($ty:ident) => {
        impl AsyncWrite for $ty {
            #[inline]
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    $ty::Tls(s) => Pin::new(s).poll_write(cx, buf),
                }
            }

            #[inline]
            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    $ty::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $ty::Plain(s) => s.is_write_vectored(),
                    $ty::Tls(s) => s.is_write_vectored(),
                }
            }

            #[inline]
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_flush(cx),
                    $ty::Tls(s) => Pin::new(s).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    $ty::Tls(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

delegate_io!(Stream);
delegate_io!(ReadHalf);
delegate_write!(Stream);
delegate_write!(WriteHalf);
