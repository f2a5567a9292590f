//! One HTTP/1.1 exchange with an instance over a pooled connection: the
//! request head (and body) written, the response head read and parsed, and
//! the response body framed (by length, chunked, or until the instance
//! closes) while it streams to the client.
//!
//! This is ours rather than hyper's client connection. hyper's client runs
//! each connection as a task of its own and hands requests, responses and
//! body chunks across channels to it; here the request's own task writes and
//! reads the socket, so a proxied request costs no task wake-ups or channel
//! hand-offs on the way to the instance. Parsing is httparse (what hyper
//! uses), with hyper's limits: 100 header fields and about 400 KiB of head.

pub mod body;

use crate::upstream::h1::body::{LimitedBody, RequestBodyError};
use crate::upstream::pool::ConnPool;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Most header fields a response head may carry.
const MAX_HEADERS: usize = 100;
/// Largest response head accepted, interim (1xx) heads included.
pub const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 8192;
/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section accepted.
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Most trailer fields accepted.
const MAX_TRAILERS: usize = 32;
/// Room left in a response's header map for the fields the gateway adds
/// without regrowing it (X-Request-ID, CORS, security headers). hyper clears
/// a connection's last response map and parses the next request head into
/// it, so the room also serves the fields added to requests (the identity
/// headers, X-Request-ID).
const HEADROOM: usize = 8;

/// An idle connection to an instance, as its pool keeps it.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    bufs: Buffers,
}

/// A connection's buffers, kept from one exchange to the next.
#[derive(Debug, Default)]
struct Buffers {
    /// Bytes read and not consumed yet.
    read: BytesMut,
    /// The request head being written.
    write: Vec<u8>,
    /// Where the last head's fields lie in `read`.
    fields: Vec<[usize; 4]>,
}

/// A connection busy with an exchange whose response body is streaming.
#[derive(Debug)]
struct Busy {
    wire: Wire,
    bufs: Buffers,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The connection closed (or was reset) before any of a response came.
    #[error("the instance closed the connection before answering")]
    Closed,
    /// Writing the request failed.
    #[error("writing the request: {0}")]
    Write(#[source] io::Error),
    /// Reading the response failed.
    #[error("reading the response: {0}")]
    Read(#[source] io::Error),
    /// The response broke HTTP/1.1.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    /// The response head grew past [`MAX_HEAD_BYTES`].
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// The connection closed before the end of the response body.
    #[error("the instance closed the connection before the end of the response body")]
    Truncated,
    /// The request body failed (over its limit, or the client's stream).
    #[error(transparent)]
    Body(#[from] RequestBodyError),
}

impl ExchangeError {
    /// Whether the instance closed the connection before answering (a
    /// kept-alive connection it had already given up on).
    pub fn is_closed(&self) -> bool {
        matches!(self, ExchangeError::Closed)
    }
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

/// The socket of a connection: whole, or split while a request body is
/// still being sent by an upload task of its own (the response streams
/// back meanwhile, so both directions flow at once, as an echo needs).
#[derive(Debug)]
enum Wire {
    /// Only this exchange's task uses it.
    Whole(TcpStream),
    /// The read half is here; the write half is with the upload, which
    /// hands it back when the body has gone out.
    Split { read: OwnedReadHalf, upload: Upload },
    /// The write half is gone (sending the body failed): not reusable.
    ReadOnly(OwnedReadHalf),
}

/// The task sending a streamed request body; aborted when dropped.
#[derive(Debug)]
struct Upload(JoinHandle<Result<OwnedWriteHalf, ExchangeError>>);

impl Drop for Upload {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Wire {
    fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            Wire::Whole(stream) => tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf),
            Wire::Split { read, .. } | Wire::ReadOnly(read) => {
                tokio_util::io::poll_read_buf(Pin::new(read), cx, buf)
            }
        }
    }

    /// The whole socket again, if the upload has finished sending.
    fn into_whole(self) -> Option<TcpStream> {
        match self {
            Wire::Whole(stream) => Some(stream),
            Wire::Split { read, mut upload } => {
                let mut cx = Context::from_waker(Waker::noop());
                match Pin::new(&mut upload.0).poll(&mut cx) {
                    Poll::Ready(Ok(Ok(write))) => read.reunite(write).ok(),
                    _ => None,
                }
            }
            Wire::ReadOnly(_) => None,
        }
    }
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestFraming {
    /// No body; `Content-Length: 0` sent when `announce`.
    Empty { announce: bool },
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked` (length unknown beforehand).
    Chunked,
}

fn request_framing(method: &Method, headers: &HeaderMap, body: &LimitedBody) -> RequestFraming {
    if body.is_end_stream() {
        // RFC 9110 8.6: a length is sent where the method gives the content
        // a meaning, or where the client sent one.
        let bodiless_method = matches!(
            *method,
            Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
        );
        return RequestFraming::Empty {
            announce: !bodiless_method || headers.contains_key(CONTENT_LENGTH),
        };
    }
    match body.size_hint().exact() {
        Some(len) => RequestFraming::Length(len),
        None => RequestFraming::Chunked,
    }
}

/// Writes the request head into `out`: the request line, every header but
/// the framing ones, the `extra` fields, and the framing the body needs.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::request::Parts,
    extra: &[(&HeaderName, &HeaderValue)],
    framing: RequestFraming,
) {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        write_field(out, name, value);
    }
    for (name, value) in extra {
        write_field(out, name, value);
    }
    match framing {
        RequestFraming::Empty { announce: false } => {}
        RequestFraming::Empty { announce: true } => out.extend_from_slice(b"content-length: 0\r\n"),
        RequestFraming::Length(len) => {
            let _ = write!(out, "content-length: {len}\r\n"); // a Vec takes every write
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

fn write_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The error of a failed write before any response came: a connection the
/// instance closed or reset shows as [`ExchangeError::Closed`].
fn write_error(e: io::Error) -> ExchangeError {
    match e.kind() {
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted => ExchangeError::Closed,
        _ => ExchangeError::Write(e),
    }
}

/// Sends `parts` (with the `extra` header fields) and `body` over `conn`
/// and reads the response head. The body of the response streams from the
/// connection, which returns to `pool` once that body has been read to its
/// end (and is closed if it is dropped before).
pub async fn exchange(
    conn: Conn,
    parts: &http::request::Parts,
    extra: &[(&HeaderName, &HeaderValue)],
    body: LimitedBody,
    pool: &Arc<ConnPool>,
) -> Result<Response<UpstreamBody>, ExchangeError> {
    let Conn {
        mut stream,
        mut bufs,
    } = conn;
    let framing = request_framing(&parts.method, &parts.headers, &body);
    encode_head(&mut bufs.write, parts, extra, framing);
    // A body at hand goes out with the head; a streamed one after it.
    let streaming = match body {
        LimitedBody::Buffered { data } => {
            if let Some(data) = data {
                bufs.write.extend_from_slice(&data);
            }
            None
        }
        _ if matches!(framing, RequestFraming::Empty { .. }) => None,
        streaming => Some(streaming),
    };
    stream.write_all(&bufs.write).await.map_err(write_error)?;
    let (mut head, wire) = match streaming {
        None => {
            let head = read_head(&mut stream, &mut bufs.read, &mut bufs.fields).await?;
            (head, Wire::Whole(stream))
        }
        Some(body) => send_streaming(stream, body, framing, &mut bufs).await?,
    };
    let (state, keep_alive) = response_framing(&mut head, parts.method == Method::HEAD)?;
    let busy = Busy { wire, bufs };
    let mut response = Response::new(UpstreamBody::new(busy, pool.clone(), state, keep_alive));
    *response.status_mut() = head.status;
    *response.version_mut() = head.version;
    *response.headers_mut() = head.headers;
    Ok(response)
}

/// Sends a streamed body from a task of its own while the response head is
/// read here, so that an instance may answer before it has read the whole
/// body (a 413, or an echo) and keep reading it while it answers. A body
/// that fails before any answer (over the route's limit) fails the
/// exchange.
async fn send_streaming(
    stream: TcpStream,
    body: LimitedBody,
    framing: RequestFraming,
    bufs: &mut Buffers,
) -> Result<(Head, Wire), ExchangeError> {
    let Buffers { read, fields, .. } = bufs;
    let (mut rd, wr) = stream.into_split();
    let mut upload = Upload(tokio::spawn(async move {
        let mut wr = wr;
        let mut scratch = Vec::new();
        match send_body(&mut wr, body, framing, &mut scratch).await {
            Ok(()) => Ok(wr),
            Err(e) => {
                // A client's body that failed must not reach the instance
                // as a request cut short by a FIN, which it could answer
                // before the failure is seen here: the socket closes only
                // once the exchange drops its read half.
                wr.forget();
                Err(e)
            }
        }
    }));
    let first = {
        let reading = read_head(&mut rd, read, fields);
        tokio::pin!(reading);
        tokio::select! {
            biased;
            head = &mut reading => Ok(head),
            sent = &mut upload.0 => Err(sent),
        }
    };
    // Reading a head again goes on from the bytes already read.
    match first {
        Ok(head) => Ok((head?, Wire::Split { read: rd, upload })),
        Err(Ok(Ok(wr))) => {
            let head = read_head(&mut rd, read, fields).await?;
            let stream = rd
                .reunite(wr)
                .map_err(|_| ExchangeError::Write(io::Error::other("socket halves mismatched")))?;
            Ok((head, Wire::Whole(stream)))
        }
        Err(Ok(Err(ExchangeError::Body(e)))) => Err(ExchangeError::Body(e)),
        // The instance may have answered before closing: that answer wins
        // over the failed write.
        Err(Ok(Err(write))) => {
            let head = read_head(&mut rd, read, fields).await.map_err(|_| write)?;
            Ok((head, Wire::ReadOnly(rd)))
        }
        Err(Err(join)) => Err(ExchangeError::Write(io::Error::other(join))),
    }
}

/// Streams `body` to `wr`, chunk-encoded when `framing` says so, checking
/// a declared length against what the body holds.
async fn send_body<W: AsyncWrite + Unpin>(
    wr: &mut W,
    body: LimitedBody,
    framing: RequestFraming,
    scratch: &mut Vec<u8>,
) -> Result<(), ExchangeError> {
    use http_body_util::BodyExt;
    let chunked = framing == RequestFraming::Chunked;
    let mut body = std::pin::pin!(body);
    let mut sent: u64 = 0;
    while let Some(frame) = body.as_mut().frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers of the client's are not forwarded
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if let RequestFraming::Length(len) = framing {
            if sent > len {
                return Err(ExchangeError::Write(io::Error::other(
                    "the request body is longer than its content-length",
                )));
            }
        }
        if chunked {
            scratch.clear();
            let _ = write!(scratch, "{:x}\r\n", data.len()); // a Vec takes every write
            scratch.extend_from_slice(&data);
            scratch.extend_from_slice(b"\r\n");
            wr.write_all(scratch).await.map_err(write_error)?;
        } else {
            wr.write_all(&data).await.map_err(write_error)?;
        }
    }
    match framing {
        RequestFraming::Chunked => wr.write_all(b"0\r\n\r\n").await.map_err(write_error),
        RequestFraming::Length(len) if sent != len => Err(ExchangeError::Write(io::Error::other(
            "the request body is shorter than its content-length",
        ))),
        _ => Ok(()),
    }
}

/// A final response head.
#[derive(Debug)]
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    hints: Hints,
}

/// What a head's fields say about its connection and the framing of its
/// body, gathered while the fields are read (no lookups afterwards).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Hints {
    /// `Connection: close`.
    close: bool,
    /// `Connection: keep-alive`.
    keep_alive: bool,
    /// A `Transfer-Encoding` is present.
    transfer_encoding: bool,
    /// The last transfer coding is `chunked`.
    chunked_last: bool,
    /// The `Content-Length`: every value (and list item) the same run of
    /// digits.
    content_length: Option<u64>,
}

/// Whether a field goes into the response's headers, or was about this
/// connection only and is consumed by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Kept,
    Consumed,
}

impl Hints {
    /// Takes note of one field. `Transfer-Encoding`, `Keep-Alive` and a
    /// `Connection` naming only `close`/`keep-alive` are consumed: the body
    /// is handed on decoded and the connection is the client's. A
    /// `Connection` listing other names is kept, so that the proxy removes
    /// the fields it names (RFC 9110 section 7.6.1).
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<Field, ExchangeError> {
        if name == CONNECTION {
            let mut others = false;
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                let close = token.eq_ignore_ascii_case(b"close");
                let keep_alive = token.eq_ignore_ascii_case(b"keep-alive");
                self.close |= close;
                self.keep_alive |= keep_alive;
                others |= !(close || keep_alive || token.is_empty());
            }
            if !others {
                return Ok(Field::Consumed);
            }
        } else if name == KEEP_ALIVE {
            return Ok(Field::Consumed);
        } else if name == TRANSFER_ENCODING {
            self.transfer_encoding = true;
            let last = value
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .unwrap_or(b"");
            self.chunked_last = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            return Ok(Field::Consumed);
        } else if name == CONTENT_LENGTH {
            for item in value.as_bytes().split(|&b| b == b',') {
                let length = parse_length(item.trim_ascii())
                    .ok_or(ExchangeError::Malformed("invalid content-length"))?;
                if self.content_length.is_some_and(|l| l != length) {
                    return Err(ExchangeError::Malformed(
                        "conflicting content-length values",
                    ));
                }
                self.content_length = Some(length);
            }
        }
        Ok(Field::Kept)
    }
}

/// A run of decimal digits as a number (no sign, no blanks, no overflow).
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Reads until a final (non-1xx) response head is complete; interim heads
/// are skipped.
async fn read_head<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    fields: &mut Vec<[usize; 4]>,
) -> Result<Head, ExchangeError> {
    let mut consumed = 0usize;
    let mut any = !buf.is_empty();
    loop {
        if !buf.is_empty() {
            match parse_head(buf, fields)? {
                Parsed::Final(head) => return Ok(head),
                Parsed::Interim(len) => {
                    consumed += len;
                    continue;
                }
                Parsed::Partial => {}
            }
        }
        if consumed + buf.len() >= MAX_HEAD_BYTES {
            return Err(ExchangeError::HeadTooLarge);
        }
        buf.reserve(READ_CHUNK);
        match rd.read_buf(buf).await {
            Ok(0) if !any => return Err(ExchangeError::Closed),
            Ok(0) => {
                return Err(ExchangeError::Malformed(
                    "the connection closed inside the response head",
                ))
            }
            Ok(_) => any = true,
            Err(e)
                if !any
                    && matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                    ) =>
            {
                return Err(ExchangeError::Closed)
            }
            Err(e) => return Err(ExchangeError::Read(e)),
        }
    }
}

/// What the bytes read so far hold.
enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A 1xx head of this many bytes, consumed.
    Interim(usize),
    /// A final head, consumed.
    Final(Head),
}

/// Parses a response head at the start of `buf` and consumes it when whole.
/// Header values share the head's bytes rather than being copied.
fn parse_head(buf: &mut BytesMut, fields: &mut Vec<[usize; 4]>) -> Result<Parsed, ExchangeError> {
    let (len, code, minor) = {
        let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ExchangeError::Malformed("more than 100 header fields"))
            }
            Err(_) => return Err(ExchangeError::Malformed("invalid response head")),
        };
        let base = buf.as_ptr() as usize;
        fields.clear();
        for field in parsed.headers.iter() {
            let name = field.name.as_ptr() as usize - base;
            let value = field.value.as_ptr() as usize - base;
            fields.push([
                name,
                name + field.name.len(),
                value,
                value + field.value.len(),
            ]);
        }
        (len, parsed.code.unwrap_or(0), parsed.version.unwrap_or(1))
    };
    let status =
        StatusCode::from_u16(code).map_err(|_| ExchangeError::Malformed("invalid status code"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ExchangeError::Malformed(
            "switching protocols was not asked for",
        ));
    }
    if status.is_informational() {
        buf.advance(len);
        return Ok(Parsed::Interim(len));
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(fields.len() + HEADROOM);
    let mut hints = Hints::default();
    for &[name_start, name_end, value_start, value_end] in fields.iter() {
        let name = HeaderName::from_bytes(&head[name_start..name_end])
            .map_err(|_| ExchangeError::Malformed("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_start..value_end))
            .map_err(|_| ExchangeError::Malformed("invalid header value"))?;
        if hints.note(&name, &value)? == Field::Kept {
            headers.append(name, value);
        }
    }
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    Ok(Parsed::Final(Head {
        status,
        version,
        headers,
        hints,
    }))
}

/// How a response body is delimited (RFC 9112 section 6.3), and whether the
/// connection may carry another request afterwards. A `Content-Length`
/// next to `Transfer-Encoding` is dropped and the connection not reused.
fn response_framing(
    head: &mut Head,
    head_request: bool,
) -> Result<(BodyState, bool), ExchangeError> {
    let hints = head.hints;
    let mut keep_alive = if head.version == Version::HTTP_10 {
        hints.keep_alive
    } else {
        !hints.close
    };
    if head_request
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED
    {
        return Ok((BodyState::Done, keep_alive));
    }
    if hints.transfer_encoding {
        if head.version == Version::HTTP_10 {
            return Err(ExchangeError::Malformed(
                "transfer-encoding in an HTTP/1.0 response",
            ));
        }
        if head.headers.remove(CONTENT_LENGTH).is_some() {
            keep_alive = false;
        }
        if hints.chunked_last {
            return Ok((BodyState::Chunked(Chunk::Size), keep_alive));
        }
        return Ok((BodyState::UntilClose, false));
    }
    match hints.content_length {
        Some(0) => Ok((BodyState::Done, keep_alive)),
        Some(len) => Ok((BodyState::Length(len), keep_alive)),
        None => Ok((BodyState::UntilClose, false)),
    }
}

/// Where the body decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    /// This many bytes still to come.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(Chunk),
    /// Everything until the instance closes the connection.
    UntilClose,
    /// Read to its end.
    Done,
}

/// Where the chunked decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes to go.
    Data(u64),
    /// Expecting the CRLF that ends a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
}

/// What one decoding step gave.
#[derive(Debug, PartialEq)]
enum Step {
    /// Body bytes.
    Data(Bytes),
    /// The trailer fields; the body is complete.
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// More bytes must be read first.
    More,
}

impl BodyState {
    /// Decodes what it can from the front of `buf`.
    fn step(&mut self, buf: &mut BytesMut) -> Result<Step, ExchangeError> {
        loop {
            match self {
                BodyState::Done => return Ok(Step::End),
                BodyState::Length(left) => {
                    let Some(data) = take(buf, left) else {
                        return Ok(Step::More);
                    };
                    if *left == 0 {
                        *self = BodyState::Done;
                    }
                    return Ok(Step::Data(data));
                }
                BodyState::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    return Ok(Step::Data(buf.split().freeze()));
                }
                BodyState::Chunked(chunk) => match chunk {
                    Chunk::Size => {
                        if buf.first().is_some_and(|b| !b.is_ascii_hexdigit()) {
                            return Err(ExchangeError::Malformed("invalid chunk size"));
                        }
                        match httparse::parse_chunk_size(buf) {
                            Ok(httparse::Status::Complete((used, size))) => {
                                buf.advance(used);
                                *chunk = if size == 0 {
                                    Chunk::Trailers
                                } else {
                                    Chunk::Data(size)
                                };
                            }
                            Ok(httparse::Status::Partial) if buf.len() <= MAX_CHUNK_LINE => {
                                return Ok(Step::More)
                            }
                            Ok(httparse::Status::Partial) | Err(_) => {
                                return Err(ExchangeError::Malformed("invalid chunk size"))
                            }
                        }
                    }
                    Chunk::Data(left) => {
                        let Some(data) = take(buf, left) else {
                            return Ok(Step::More);
                        };
                        if *left == 0 {
                            *chunk = Chunk::DataEnd;
                        }
                        return Ok(Step::Data(data));
                    }
                    Chunk::DataEnd => {
                        if buf.len() < 2 {
                            return Ok(Step::More);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(ExchangeError::Malformed(
                                "chunk data longer than its size",
                            ));
                        }
                        buf.advance(2);
                        *chunk = Chunk::Size;
                    }
                    Chunk::Trailers => {
                        let step = trailers(buf)?;
                        if step != Step::More {
                            *self = BodyState::Done;
                        }
                        return Ok(step);
                    }
                },
            }
        }
    }
}

/// Up to `left` bytes from the front of `buf`, counted off `left`; none
/// when `buf` is empty.
fn take(buf: &mut BytesMut, left: &mut u64) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let n = usize::try_from(*left).map_or(buf.len(), |left| left.min(buf.len()));
    *left -= n as u64;
    Some(buf.split_to(n).freeze())
}

/// The trailer section after the last chunk.
fn trailers(buf: &mut BytesMut) -> Result<Step, ExchangeError> {
    if buf.starts_with(b"\r\n") {
        buf.advance(2);
        return Ok(Step::End);
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILERS];
    match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete((used, fields))) => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for field in fields {
                let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(field.name.as_bytes()),
                    HeaderValue::from_bytes(field.value),
                ) else {
                    return Err(ExchangeError::Malformed("invalid trailer field"));
                };
                map.append(name, value);
            }
            buf.advance(used);
            Ok(Step::Trailers(map))
        }
        Ok(httparse::Status::Partial) if buf.len() <= MAX_TRAILER_BYTES => Ok(Step::More),
        Ok(httparse::Status::Partial) | Err(_) => {
            Err(ExchangeError::Malformed("invalid trailer section"))
        }
    }
}

/// A response body streamed from an instance's connection, which goes back
/// to its pool when the body has been read to its end and is closed if the
/// body is dropped before (or fails).
#[derive(Debug)]
pub struct UpstreamBody {
    state: BodyState,
    conn: Option<Busy>,
    pool: Arc<ConnPool>,
    keep_alive: bool,
}

impl UpstreamBody {
    fn new(conn: Busy, pool: Arc<ConnPool>, state: BodyState, keep_alive: bool) -> Self {
        let mut body = Self {
            state,
            conn: Some(conn),
            pool,
            keep_alive,
        };
        if state == BodyState::Done {
            body.finish();
        }
        body
    }

    /// The body is complete: the connection carries the next request,
    /// unless it may not, the instance sent more than it announced, or the
    /// request body has not all gone out.
    fn finish(&mut self) {
        self.state = BodyState::Done;
        let Some(conn) = self.conn.take() else {
            return;
        };
        if !self.keep_alive || !conn.bufs.read.is_empty() {
            return;
        }
        if let Some(stream) = conn.wire.into_whole() {
            self.pool.checkin(Conn {
                stream,
                bufs: conn.bufs,
            });
        }
    }

    fn fail(&mut self, err: ExchangeError) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        self.state = BodyState::Done;
        self.conn = None;
        Poll::Ready(Some(Err(err)))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let step = match this.state.step(&mut conn.bufs.read) {
                Ok(step) => step,
                Err(err) => return this.fail(err),
            };
            match step {
                Step::Data(data) => {
                    if this.state == BodyState::Done {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Step::Trailers(map) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(map))));
                }
                Step::End => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Step::More => {
                    conn.bufs.read.reserve(READ_CHUNK);
                    let read = ready!(conn.wire.poll_read_buf(cx, &mut conn.bufs.read));
                    match read {
                        Ok(0) if this.state == BodyState::UntilClose => {
                            this.state = BodyState::Done;
                            this.conn = None;
                            return Poll::Ready(None);
                        }
                        Ok(0) => return this.fail(ExchangeError::Truncated),
                        Ok(_) => {}
                        Err(e) => return this.fail(ExchangeError::Read(e)),
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == BodyState::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Length(left) => SizeHint::with_exact(left),
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Chunked(_) | BodyState::UntilClose => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
