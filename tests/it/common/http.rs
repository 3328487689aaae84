//! Raw HTTP/1.1 client for integration tests.
//!
//! Gateway tests must put *exact* bytes on the wire: paths such as
//! `/public/../admin` or `/a%2fb`, duplicate headers, header names with
//! underscores, malformed framing, slow-loris style partial writes. Regular
//! HTTP clients normalise or reject all of that, so this module writes the
//! request bytes verbatim over a plain `TcpStream` (or a rustls stream) and
//! parses exactly one response back.
//!
//! Every network operation is bounded by [`TIMEOUT`] so a misbehaving gateway
//! fails the test instead of hanging it.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Upper bound for one request/response exchange.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// One parsed HTTP response.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Header fields in received order; names as received, values trimmed.
    pub headers: Vec<(String, String)>,
    /// De-chunked body bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of a header (case-insensitive), in received order.
    pub fn headers_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Body parsed as JSON; panics with the status and body text otherwise.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}); status {}, body: {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// Body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

// Hand-written so assertion failures show the body as text, not a byte list.
impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &self.text())
            .finish()
    }
}

/// Facts about a TLS session, returned by [`tls_send_raw`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// Negotiated ALPN protocol, e.g. `Some("http/1.1")`.
    pub alpn: Option<String>,
    /// Negotiated protocol version, e.g. `Some("TLSv1_3")`.
    pub version: Option<String>,
}

// ---------------------------------------------------------------------------
// One-shot requests
// ---------------------------------------------------------------------------

/// Opens a connection, writes `raw` verbatim and reads exactly one response.
///
/// A `HEAD` request (detected from the first bytes of `raw`) is read without
/// a body. If the server rejects the request early and resets the connection
/// while we are still writing, the response it sent (if any) is still
/// returned. The whole exchange is bounded by [`TIMEOUT`].
pub async fn send_raw(addr: SocketAddr, raw: &[u8]) -> io::Result<Response> {
    with_timeout(async {
        let mut stream = TcpStream::connect(addr).await?;
        exchange(&mut stream, &mut Vec::new(), raw).await
    })
    .await
}

/// Builds a request with [`build_request`] (`Connection: close`) and sends
/// it with [`send_raw`].
///
/// `Host: <addr>` is added unless `headers` contains a `Host`;
/// `Content-Length` is added when `body` is `Some` unless `headers` contains
/// `Content-Length` or `Transfer-Encoding`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> io::Result<Response> {
    let raw = build_request(&addr.to_string(), method, path, headers, body, false);
    send_raw(addr, &raw).await
}

/// Serialises a request.
///
/// Adds, unless the caller already supplied that header: `Host: <host>`,
/// `Content-Length` (only when `body` is `Some`, and not when the caller set
/// `Transfer-Encoding`), and `Connection: close` (only when `!keep_alive`).
pub fn build_request(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    keep_alive: bool,
) -> Vec<u8> {
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !has("host") {
        head.push_str(&format!("Host: {host}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        if !has("content-length") && !has("transfer-encoding") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
    }
    if !keep_alive && !has("connection") {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body.unwrap_or_default());
    raw
}

/// `GET path`, optionally with `Authorization: Bearer <token>`.
/// Panics on I/O errors (not on error statuses).
pub async fn get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> Response {
    send_json(addr, "GET", path, None, bearer).await
}

/// `POST path` with a JSON body, optionally with a bearer token.
/// Panics on I/O errors (not on error statuses).
pub async fn post_json(
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
    bearer: Option<&str>,
) -> Response {
    send_json(addr, "POST", path, Some(body), bearer).await
}

/// `POST path` with a JSON body (`Content-Type: application/json` first)
/// and the extra `headers` after it, as given. Panics on I/O errors (not on
/// error statuses).
pub async fn post_with(
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
) -> Response {
    let mut h: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    let raw = body.to_string();
    request(addr, "POST", path, &h, Some(raw.as_bytes()))
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// Any method with an optional JSON body (`Content-Type: application/json`)
/// and optional bearer token. Panics on I/O errors (not on error statuses).
pub async fn send_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    bearer: Option<&str>,
) -> Response {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth));
    }
    let body = body.map(|b| serde_json::to_vec(b).expect("serialise JSON body"));
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    request(addr, method, path, &headers, body.as_deref())
        .await
        .unwrap_or_else(|e| panic!("{method} {path} to {addr} failed: {e}"))
}

// ---------------------------------------------------------------------------
// Keep-alive connection
// ---------------------------------------------------------------------------

/// A persistent connection that reads one response per [`Conn::send`],
/// keeping any surplus bytes buffered for the next response.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    addr: SocketAddr,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = with_timeout(async { TcpStream::connect(addr).await }).await?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
            addr,
        })
    }

    /// The address this connection was opened to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Writes `raw` verbatim and reads exactly one response.
    pub async fn send(&mut self, raw: &[u8]) -> io::Result<Response> {
        let Conn { stream, buf, .. } = self;
        with_timeout(exchange(stream, buf, raw)).await
    }

    /// Like [`request`] but without `Connection: close`, on this connection.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        let raw = build_request(&self.addr.to_string(), method, path, headers, body, true);
        self.send(&raw).await
    }

    /// Reads one more response (e.g. after pipelining or after
    /// [`Conn::write_partial`]). `head` = the request was a HEAD.
    pub async fn read_response(&mut self, head: bool) -> io::Result<Response> {
        let Conn { stream, buf, .. } = self;
        with_timeout(read_response(stream, buf, head)).await
    }

    /// Writes bytes without reading anything (slow-loris, pipelining).
    pub async fn write_partial(&mut self, bytes: &[u8]) -> io::Result<()> {
        let stream = &mut self.stream;
        with_timeout(async {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
        .await
    }

    /// True if the server closes the connection (EOF or error) within `d`.
    /// Bytes received meanwhile (e.g. a 408) are kept for
    /// [`Conn::read_response`].
    pub async fn is_closed_within(&mut self, d: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, fill(&mut self.stream, &mut self.buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }

    /// Bytes received but not yet consumed by a parsed response.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

/// A rustls client config trusting ONLY the certificates in `ca_pem_path`
/// (ring provider set explicitly, so no process-level default is needed).
pub fn tls_client_config(
    ca_pem_path: &Path,
    alpn: &[&str],
) -> io::Result<Arc<rustls::ClientConfig>> {
    let pem = std::fs::read(ca_pem_path)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert?).map_err(io::Error::other)?;
    }
    if roots.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("no certificates in {}", ca_pem_path.display()),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// TLS handshake (verifying the chain against `ca_pem_path` and the
/// hostname `server_name`, which is also sent as SNI), then writes `raw` and
/// reads one response. `alpn` lists protocols to offer (may be empty).
/// Handshake/verification failures come back as `Err`.
pub async fn tls_send_raw(
    addr: SocketAddr,
    server_name: &str,
    ca_pem_path: &Path,
    raw: &[u8],
    alpn: &[&str],
) -> io::Result<(Response, TlsInfo)> {
    let config = tls_client_config(ca_pem_path, alpn)?;
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    with_timeout(async move {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
        let (_, session) = tls.get_ref();
        let info = TlsInfo {
            alpn: session
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            version: session.protocol_version().map(|v| format!("{v:?}")),
        };
        let response = exchange(&mut tls, &mut Vec::new(), raw).await?;
        Ok((response, info))
    })
    .await
}

/// `GET path` over TLS with `Host: <server_name>:<port>` and
/// `Connection: close`; see [`tls_send_raw`].
pub async fn tls_get(
    addr: SocketAddr,
    server_name: &str,
    ca_pem_path: &Path,
    path: &str,
) -> io::Result<Response> {
    let host = format!("{server_name}:{}", addr.port());
    let raw = build_request(&host, "GET", path, &[], None, false);
    tls_send_raw(addr, server_name, ca_pem_path, &raw, &[])
        .await
        .map(|(response, _)| response)
}

// ---------------------------------------------------------------------------
// Wire parsing
// ---------------------------------------------------------------------------

async fn with_timeout<T>(fut: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("HTTP exchange timed out after {TIMEOUT:?}"),
        )),
    }
}

/// Writes a request and reads its response. A failed write (server closed
/// early) is only reported if no response can be read either.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    raw: &[u8],
) -> io::Result<Response> {
    let written = async {
        stream.write_all(raw).await?;
        stream.flush().await
    }
    .await;
    match (read_response(stream, buf, is_head(raw)).await, written) {
        (Ok(response), _) => Ok(response),
        (Err(_), Err(write_err)) => Err(write_err),
        (Err(read_err), Ok(())) => Err(read_err),
    }
}

fn is_head(raw: &[u8]) -> bool {
    let start = raw.iter().position(|b| !b"\r\n".contains(b)).unwrap_or(0);
    raw[start..].starts_with(b"HEAD ")
}

/// Reads more bytes into `buf`; returns how many (0 = EOF). A TLS peer that
/// closes without close_notify counts as EOF.
async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 16 * 1024];
    let n = match stream.read(&mut chunk).await {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
        Err(e) => return Err(e),
    };
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Reads until `buf` holds at least `n` bytes.
async fn fill_to<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    n: usize,
) -> io::Result<()> {
    while buf.len() < n {
        if fill(stream, buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed with {} of {n} expected bytes", buf.len()),
            ));
        }
    }
    Ok(())
}

/// Takes one line (without its CRLF/LF) off the front of `buf`.
async fn read_line<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<String> {
    loop {
        if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            return Ok(String::from_utf8_lossy(line).into_owned());
        }
        if fill(stream, buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a line",
            ));
        }
    }
}

/// End of the header block (index just past the blank line), if complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find_map(|i| {
        if buf[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if buf[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Parses the status line and header block.
fn parse_head(head: &[u8]) -> io::Result<(u16, Vec<(String, String)>)> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    let status = match (version.starts_with("HTTP/"), status) {
        (true, Some(status)) => status,
        _ => return Err(invalid(format!("bad status line: {status_line:?}"))),
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // Obsolete line folding: append to the previous value.
            if let Some((_, value)) = headers.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
                continue;
            }
        }
        match line.split_once(':') {
            Some((name, value)) => headers.push((name.to_string(), value.trim().to_string())),
            None => return Err(invalid(format!("bad header line: {line:?}"))),
        }
    }
    Ok((status, headers))
}

/// Reads exactly one response (skipping interim 1xx responses other than
/// 101), leaving any following bytes in `buf`.
async fn read_response<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> io::Result<Response> {
    loop {
        let end = loop {
            if let Some(end) = head_end(buf) {
                break end;
            }
            if fill(stream, buf).await? == 0 {
                let msg = if buf.is_empty() {
                    "connection closed before any response bytes".to_string()
                } else {
                    format!(
                        "connection closed mid-headers: {:?}",
                        String::from_utf8_lossy(buf)
                    )
                };
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, msg));
            }
        };
        let (status, headers) = parse_head(&buf[..end])?;
        buf.drain(..end);
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let transfer_encoding = header("transfer-encoding");
        let content_length = header("content-length");
        let chunked = transfer_encoding
            .as_deref()
            .and_then(|te| te.rsplit(',').next())
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        let body = if head_request || status < 200 || status == 204 || status == 304 {
            Vec::new()
        } else if chunked {
            read_chunked(stream, buf).await?
        } else if let (None, Some(cl)) = (&transfer_encoding, &content_length) {
            let len: usize = cl
                .parse()
                .map_err(|_| invalid(format!("bad Content-Length: {cl:?}")))?;
            fill_to(stream, buf, len).await?;
            buf.drain(..len).collect()
        } else {
            // Delimited by connection close.
            while fill(stream, buf).await? > 0 {}
            std::mem::take(buf)
        };
        let response = Response {
            status,
            headers,
            body,
        };
        return Ok(response);
    }
}

async fn read_chunked<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(stream, buf).await?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size line: {line:?}")))?;
        if size == 0 {
            // Skip trailers up to the terminating blank line.
            while !read_line(stream, buf).await?.is_empty() {}
            return Ok(body);
        }
        fill_to(stream, buf, size + 2).await?;
        if &buf[size..size + 2] != b"\r\n" {
            return Err(invalid("chunk not followed by CRLF".to_string()));
        }
        body.extend(buf.drain(..size));
        buf.drain(..2);
    }
}

/// A slow reader: sends `head` on a new connection to `addr` whose receive
/// buffer is as small as the kernel allows, reads nothing for `stall`,
/// then reads until the server ends the connection. Returns what arrived,
/// or `None` if the connection was still open 20 s after reading resumed.
pub async fn stalled_read(addr: SocketAddr, head: &str, stall: Duration) -> Option<Vec<u8>> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(stall).await;
    read_until_closed(&mut s, Duration::from_secs(20)).await
}

/// Reads `r` until the peer ends the connection (EOF or an error): what
/// arrived, or `None` if it was still open after `max`.
pub async fn read_until_closed<R: AsyncRead + Unpin>(r: &mut R, max: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    tokio::time::timeout(max, async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => got.extend_from_slice(&buf[..k]),
            }
        }
    })
    .await
    .ok()?;
    Some(got)
}
