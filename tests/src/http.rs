//! A tiny blocking HTTP/1.1 client over a raw `TcpStream`, enough for
//! tests: one request per connection (`Connection: close`), content-length
//! or chunked bodies; raw bytes sent as they are for malformed or slow
//! requests. The `*_async` forms run the same on tokio's blocking pool, for
//! tests whose server runs in the test's own runtime.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Default time a test request may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Decoded body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The `x-upstream` header set by `test-upstream`, or "".
    pub fn upstream(&self) -> &str {
        self.header("x-upstream").unwrap_or("")
    }
}

/// `GET path` on `addr`.
pub fn get(addr: SocketAddr, path: &str) -> io::Result<HttpResponse> {
    request(addr, "GET", path, &[], b"", DEFAULT_TIMEOUT)
}

/// `POST path` on `addr` with `body`.
pub fn post(addr: SocketAddr, path: &str, body: &[u8]) -> io::Result<HttpResponse> {
    request(addr, "POST", path, &[], body, DEFAULT_TIMEOUT)
}

/// Sends one request and reads the whole response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<HttpResponse> {
    let mut stream = connect(addr, timeout)?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw, method == "HEAD")
}

/// Writes `bytes` as they are, then `after` once `pause` has passed (a body
/// that comes late), and reads until the server closes or `timeout` passes.
/// With `hang_up`, the client shuts its sending side right after `after`.
pub fn raw_exchange(
    addr: SocketAddr,
    bytes: &[u8],
    pause: Duration,
    after: &[u8],
    hang_up: bool,
    timeout: Duration,
) -> io::Result<Vec<u8>> {
    let mut stream = connect(addr, timeout)?;
    stream.write_all(bytes)?;
    if !pause.is_zero() {
        std::thread::sleep(pause);
    }
    // The server may have answered and closed already.
    let _ = stream.write_all(after);
    if hang_up {
        stream.shutdown(std::net::Shutdown::Write)?;
    }
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => Ok(raw),
        Err(e) if !raw.is_empty() || e.kind() == io::ErrorKind::ConnectionReset => Ok(raw),
        Err(e) => Err(e),
    }
}

/// `GET path` on `addr`, from async code.
pub async fn get_async(addr: SocketAddr, path: &str) -> io::Result<HttpResponse> {
    let path = path.to_string();
    blocking(move || get(addr, &path)).await
}

/// Writes `bytes` as they are and reads until the server closes (or resets
/// the connection): all that arrived. An error when the server has not
/// closed within `timeout`.
pub fn send_raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let deadline = std::time::Instant::now() + timeout;
    let mut stream = connect(addr, timeout)?;
    stream.write_all(bytes)?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("not closed within {timeout:?}"),
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(raw),
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            // Closed with a reset (answered before the request was read whole).
            Err(_) => return Ok(raw),
        }
    }
}

/// [`send_raw`], from async code.
pub async fn send_raw_async(
    addr: SocketAddr,
    bytes: &[u8],
    timeout: Duration,
) -> io::Result<Vec<u8>> {
    let bytes = bytes.to_vec();
    blocking(move || send_raw(addr, &bytes, timeout)).await
}

/// The status code of a raw answer's status line.
pub fn status_of(raw: &[u8]) -> Option<u16> {
    let line = raw.split(|b| *b == b'\n').next()?;
    std::str::from_utf8(line)
        .ok()?
        .split(' ')
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// A connection to `addr` with `timeout` on connecting, reading and
/// writing, without Nagle's delay.
fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Runs blocking socket work off the async runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(io::Error::other)?
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Parses a complete HTTP/1.1 response.
pub fn parse_response(raw: &[u8], head_only: bool) -> io::Result<HttpResponse> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid("the connection closed before the response head was complete"))?;
    let head =
        std::str::from_utf8(&raw[..split]).map_err(|_| invalid("response head is not UTF-8"))?;
    let rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(&format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut response = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    if head_only {
        return Ok(response);
    }
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    response.body = if chunked {
        dechunk(rest)?
    } else if let Some(len) = response
        .header("content-length")
        .and_then(|l| l.parse::<usize>().ok())
    {
        if rest.len() < len {
            return Err(invalid(&format!(
                "body cut short: {} of {len} bytes",
                rest.len()
            )));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(response)
}

fn dechunk(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| invalid("chunked body cut short"))?;
        let size_text =
            std::str::from_utf8(&data[..line_end]).map_err(|_| invalid("bad chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| invalid("bad chunk size"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if data.len() < size + 2 {
            return Err(invalid("chunked body cut short"));
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_and_chunked_bodies() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Upstream: a\r\n\r\nhi",
            false,
        )
        .unwrap();
        assert_eq!(
            (r.status, r.text().as_str(), r.upstream()),
            (200, "hi", "a")
        );
        let r = parse_response(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!((r.status, r.text().as_str()), (503, "abcde"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhi", false).is_err());
        assert!(parse_response(b"HTTP/1.1 200", false).is_err());
    }
}
