//! Spots request heads that carry both `Content-Length` and
//! `Transfer-Encoding`, the classic request-smuggling shape.
//!
//! hyper handles such a request safely (RFC 9112 section 6.3: the chunked
//! encoding wins, the `Content-Length` is dropped, and the connection closes
//! after the answer) but leaves no trace that the request had both, while the
//! gateway refuses it outright with 400. So a connection's bytes pass a small
//! line scanner on their way into hyper ([`Watched`]): it notes, per header
//! block, whether both names appeared, and the handler asks
//! ([`FramingWatch::take_conflict`]) when a request with `Transfer-Encoding`
//! arrives. The scanner runs before hyper parses the bytes it has seen, so the
//! note is always there by the time the request is handled.
//!
//! The scanner does not know where bodies are, so it treats them as lines too.
//! A body that itself contains a blank-line-delimited block with both header
//! names would flag the connection, and the next chunked request on it would
//! be refused; only a client crafting such bodies can cause that, to itself.

use crate::edge::linger::{self, Linger};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The notes one connection's stream and its request handler leave each
/// other: the scanner's conflicting framing, and whether the last request
/// came with a body (whose unread rest makes the close linger).
#[derive(Debug, Default)]
pub struct FramingWatch {
    conflict: AtomicBool,
    body: AtomicBool,
}

impl FramingWatch {
    /// A fresh note, shared by a connection's stream and its handler.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Whether a header block with both `Content-Length` and
    /// `Transfer-Encoding` was read since the last call; clears the note.
    pub fn take_conflict(&self) -> bool {
        // One load in the usual case; the swap only when something was seen.
        self.conflict.load(Ordering::Relaxed) && self.conflict.swap(false, Ordering::Relaxed)
    }

    fn flag(&self) {
        self.conflict.store(true, Ordering::Relaxed);
    }

    /// Notes whether the request being handled has a body to come.
    #[inline]
    pub fn note_body(&self, has_body: bool) {
        self.body.store(has_body, Ordering::Relaxed);
    }

    /// Whether the last request had a body: the client may still be
    /// sending it when the connection closes.
    fn body_expected(&self) -> bool {
        self.body.load(Ordering::Relaxed)
    }
}

/// The longest header-name prefix looked for, `transfer-encoding:`.
const LONGEST: usize = 18;
const CONTENT_LENGTH: &[u8] = b"content-length:";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding:";
const SAW_LENGTH: u8 = 1;
const SAW_ENCODING: u8 = 2;

/// Follows a byte stream line by line, keeping only the first bytes of each
/// line and which framing headers the current header block has shown.
#[derive(Debug)]
struct HeadScanner {
    /// The current line's first bytes (up to [`LONGEST`]).
    line: [u8; LONGEST],
    len: usize,
    /// Whether the current line's start is still being collected.
    collecting: bool,
    /// Framing headers seen since the last blank line.
    seen: u8,
}

impl HeadScanner {
    fn new() -> Self {
        Self {
            line: [0; LONGEST],
            len: 0,
            // A connection starts at the start of a line.
            collecting: true,
            seen: 0,
        }
    }

    /// Scans `data`, the next bytes of the stream. Answers whether a header
    /// block with both framing headers ended within them.
    fn feed(&mut self, mut data: &[u8]) -> bool {
        let mut conflict = false;
        while !data.is_empty() {
            if self.collecting {
                let room = LONGEST - self.len;
                let window = &data[..data.len().min(room)];
                if let Some(end) = memchr::memchr(b'\n', window) {
                    self.push(&window[..end]);
                    conflict |= self.line_ended();
                    data = &data[end + 1..];
                    continue;
                }
                self.push(window);
                data = &data[window.len()..];
                if self.len == LONGEST {
                    self.classify();
                    self.collecting = false;
                }
                continue;
            }
            match memchr::memchr(b'\n', data) {
                Some(end) => {
                    data = &data[end + 1..];
                    self.collecting = true;
                    self.len = 0;
                }
                None => break,
            }
        }
        conflict
    }

    fn push(&mut self, bytes: &[u8]) {
        self.line[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// A line shorter than [`LONGEST`] ended: a blank one closes the block.
    fn line_ended(&mut self) -> bool {
        let line = &self.line[..self.len];
        let blank = line.is_empty() || line == b"\r";
        let mut conflict = false;
        if blank {
            conflict = self.seen == SAW_LENGTH | SAW_ENCODING;
            self.seen = 0;
        } else {
            self.classify();
        }
        self.len = 0;
        conflict
    }

    fn classify(&mut self) {
        let line = &self.line[..self.len];
        if starts_with_ignore_case(line, CONTENT_LENGTH) {
            self.seen |= SAW_LENGTH;
        } else if starts_with_ignore_case(line, TRANSFER_ENCODING) {
            self.seen |= SAW_ENCODING;
        }
    }
}

fn starts_with_ignore_case(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

pin_project_lite::pin_project! {
    /// A client connection's stream whose incoming bytes are scanned for
    /// conflicting framing headers; writes pass straight through, and its
    /// close lingers ([`crate::edge::linger`]).
    pub struct Watched<S> {
        #[pin]
        inner: S,
        scanner: HeadScanner,
        watch: Arc<FramingWatch>,
        linger: Option<Linger>,
    }
}

impl<S> Watched<S> {
    /// Wraps `inner`, leaving notes in `watch`.
    pub fn new(inner: S, watch: Arc<FramingWatch>) -> Self {
        Self {
            inner,
            scanner: HeadScanner::new(),
            watch,
            linger: None,
        }
    }
}

impl<S: AsyncRead> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if this.scanner.feed(&buf.filled()[before..]) {
                this.watch.flag();
            }
        }
        polled
    }
}

impl<S: AsyncRead + AsyncWrite> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    /// hyper shuts the stream down once the connection is done: the
    /// close lingers while the client may still be sending.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let expected = this.watch.body_expected();
        linger::poll_close(this.inner, this.linger, expected, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_pieces(stream: &[u8], piece: usize) -> bool {
        let mut scanner = HeadScanner::new();
        let mut conflict = false;
        for chunk in stream.chunks(piece) {
            conflict |= scanner.feed(chunk);
        }
        conflict
    }

    const BOTH: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    #[test]
    fn both_framing_headers_in_one_head_are_spotted_however_the_bytes_arrive() {
        for piece in 1..BOTH.len() {
            assert!(scan_in_pieces(BOTH, piece), "split every {piece} bytes");
        }
        let shouted = b"POST / HTTP/1.1\r\nTRANSFER-ENCODING: chunked\r\ncontent-LENGTH:4\r\n\r\n";
        assert!(scan_in_pieces(shouted, 7));
        let bare_newlines = b"POST / HTTP/1.1\ncontent-length: 4\ntransfer-encoding: chunked\n\n";
        assert!(scan_in_pieces(bare_newlines, 64));
    }

    #[test]
    fn one_framing_header_per_head_is_fine_even_across_requests() {
        let stream = b"POST /a HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for piece in 1..stream.len() {
            assert!(!scan_in_pieces(stream, piece), "split every {piece} bytes");
        }
    }

    #[test]
    fn look_alike_names_and_values_do_not_count() {
        let stream = b"POST / HTTP/1.1\r\nX-Content-Length: 4\r\nContent-Lengthy: 1\r\nTransfer-Encoding: chunked\r\nX-Note: content-length: 4\r\n\r\n";
        assert!(!scan_in_pieces(stream, 5));
        assert!(!scan_in_pieces(stream, stream.len()));
    }

    #[test]
    fn the_note_is_taken_once() {
        let watch = FramingWatch::new();
        assert!(!watch.take_conflict());
        watch.flag();
        assert!(watch.take_conflict());
        assert!(!watch.take_conflict());
    }

    #[tokio::test]
    async fn a_watched_stream_passes_bytes_through_and_leaves_the_note() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(16);
        let watch = FramingWatch::new();
        let mut watched = Watched::new(server, watch.clone());
        tokio::spawn(async move { client.write_all(BOTH).await.unwrap() });
        let mut read = Vec::new();
        watched.read_to_end(&mut read).await.unwrap();
        assert_eq!(read, BOTH);
        assert!(watch.take_conflict());
    }
}
