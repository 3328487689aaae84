//! A real upstream HTTP/1.1 app to sit behind the gateway.
//!
//! It echoes every request back as JSON *exactly as it arrived* (method, raw
//! request-target, headers in order with their original names, body), so
//! tests can assert what the gateway forwarded: injected identity headers,
//! stripped client headers, path normalisation, body passthrough. It is a
//! hand-rolled server on a plain tokio `TcpListener` so nothing between the
//! gateway and the assertions rewrites the request.
//!
//! Echo body: `{"method", "path", "version", "headers": [[name, value], ...],
//! "body", "upstream": "<addr>"}`.
//!
//! Special paths (matched on the path part, query ignored):
//! - `/__status/<code>`: answer with that status and a small JSON body.
//! - `/__slow/<ms>`: sleep `ms` milliseconds, then answer the normal echo.
//! - `/__bytes/<n>`: answer 200 with `n` bytes of `a` (octet-stream).
//! - `/__drop`: close the connection without answering.
//! - `/__cut/<n>`: answer 200 announcing `2n` bytes, send `n`, then close
//!   (an upstream failing mid-response).
//!
//! A request header `X-Echo-Response-Header: Name: Value` (repeatable) adds
//! `Name: Value` to the response, e.g. to test response-header filtering.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A running upstream; the server task stops when this is dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    hits: AtomicUsize,
    requests: Mutex<Vec<Value>>,
    /// Live connection tasks; lets `stop_and_wait` know they are gone.
    open_conns: AtomicUsize,
}

/// Starts an upstream on `127.0.0.1:<ephemeral>`.
pub async fn start() -> Upstream {
    Upstream::start().await
}

/// Starts an upstream on a specific address (e.g. to bring a stopped one
/// back on the same port).
pub async fn start_on(addr: SocketAddr) -> Upstream {
    Upstream::start_on(addr).await
}

impl Upstream {
    /// Starts an upstream on `127.0.0.1:<ephemeral>`.
    pub async fn start() -> Upstream {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], super::free_port()))).await
    }

    /// Starts an upstream on `addr`, retrying briefly while the port is
    /// still held by a just-stopped server.
    pub async fn start_on(addr: SocketAddr) -> Upstream {
        let listener = bind_with_retry(addr).await;
        let addr = listener.local_addr().expect("upstream local_addr");
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(accept_loop(listener, shared.clone(), addr));
        Upstream { addr, shared, task }
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Number of requests received (counted on arrival, before any delay).
    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// Echo JSON of the most recent request.
    pub fn last_request(&self) -> Option<Value> {
        lock(&self.shared.requests).last().cloned()
    }

    /// Echo JSON of every request received, oldest first.
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.shared.requests).clone()
    }

    /// Forgets recorded requests and resets the hit counter.
    pub fn reset(&self) {
        lock(&self.shared.requests).clear();
        self.shared.hits.store(0, Ordering::SeqCst);
    }

    /// Aborts the server task (listener and connections close shortly after).
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Like [`Upstream::stop`] but returns only once the listener and all
    /// connections are really closed (bounded to 5 s).
    pub async fn stop_and_wait(&self) {
        self.task.abort();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !(self.task.is_finished() && self.shared.open_conns.load(Ordering::SeqCst) == 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn bind_with_retry(addr: SocketAddr) -> TcpListener {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("upstream: cannot bind {addr}: {e}"),
        }
    }
}

/// Decrements the open-connection count when a connection task ends or is
/// aborted.
struct ConnGuard(Arc<Shared>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.open_conns.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, me: SocketAddr) {
    // Owning the connection tasks here means aborting this task (dropping the
    // JoinSet) aborts them all too.
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        shared.open_conns.fetch_add(1, Ordering::SeqCst);
        let guard = ConnGuard(shared.clone());
        let shared = shared.clone();
        conns.spawn(async move {
            let _guard = guard;
            // Errors just end the connection; the gateway sees the close.
            let _ = serve_conn(stream, &shared, me).await;
        });
    }
}

struct Request {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn wants_close(&self) -> bool {
        let connection = self.header("connection").unwrap_or_default();
        let has = |token: &str| {
            connection
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        has("close") || (self.version == "HTTP/1.0" && !has("keep-alive"))
    }
}

async fn serve_conn(mut stream: TcpStream, shared: &Shared, me: SocketAddr) -> io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let Some(req) = read_request(&mut stream, &mut buf).await? else {
            return Ok(());
        };
        shared.hits.fetch_add(1, Ordering::SeqCst);
        let echo = json!({
            "method": req.method,
            "path": req.target,
            "version": req.version,
            "headers": req.headers.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
            "body": String::from_utf8_lossy(&req.body),
            "upstream": me.to_string(),
        });
        lock(&shared.requests).push(echo.clone());

        let path = req.target.split('?').next().unwrap_or_default();
        let arg = |prefix: &str| -> Option<u64> {
            path.strip_prefix(prefix)?.split('/').next()?.parse().ok()
        };
        let mut status = 200u16;
        let mut content_type = "application/json";
        let mut body = serde_json::to_vec(&echo).expect("serialise echo");
        if path == "/__drop" {
            return Ok(());
        } else if let Some(n) = arg("/__cut/") {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                2 * n
            );
            stream.write_all(head.as_bytes()).await?;
            stream
                .write_all(&vec![b'a'; usize::try_from(n).unwrap_or(0)])
                .await?;
            stream.flush().await?;
            return Ok(());
        } else if let Some(code) = arg("/__status/") {
            status = u16::try_from(code).unwrap_or(500);
            body = serde_json::to_vec(&json!({"status": status, "upstream": me.to_string()}))
                .expect("serialise status body");
        } else if let Some(ms) = arg("/__slow/") {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        } else if let Some(n) = arg("/__bytes/") {
            content_type = "application/octet-stream";
            body = vec![b'a'; usize::try_from(n).unwrap_or(0)];
        }

        let close = req.wants_close();
        let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        let bodyless = status < 200 || status == 204 || status == 304;
        if !bodyless {
            head.push_str(&format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str(&format!("X-Upstream: {me}\r\n"));
        for (name, value) in &req.headers {
            if name.eq_ignore_ascii_case("x-echo-response-header") {
                head.push_str(&format!("{value}\r\n"));
            }
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if !bodyless && req.method != "HEAD" {
            out.extend_from_slice(&body);
        }
        stream.write_all(&out).await?;
        stream.flush().await?;
        if close {
            stream.shutdown().await?;
            return Ok(());
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Reads more bytes into `buf`; returns how many (0 = EOF).
async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn eof(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("client closed {what}"),
    )
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

async fn fill_to<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    n: usize,
) -> io::Result<()> {
    while buf.len() < n {
        if fill(stream, buf).await? == 0 {
            return Err(eof("mid-body"));
        }
    }
    Ok(())
}

async fn read_line<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<String> {
    loop {
        if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            return Ok(String::from_utf8_lossy(line).into_owned());
        }
        if fill(stream, buf).await? == 0 {
            return Err(eof("mid-line"));
        }
    }
}

/// Reads one request; `None` on a clean close between requests.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Request>> {
    // Tolerate stray CRLFs between keep-alive requests (RFC 9112 §2.2).
    let mut lines = Vec::new();
    loop {
        let line = match read_line(stream, buf).await {
            Ok(line) => line,
            Err(e)
                if e.kind() == io::ErrorKind::UnexpectedEof
                    && lines.is_empty()
                    && buf.is_empty() =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if line.is_empty() {
            if lines.is_empty() {
                continue;
            }
            break;
        }
        lines.push(line);
    }

    let request_line = &lines[0];
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid(format!("bad request line: {request_line:?}")));
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in &lines[1..] {
        match line.split_once(':') {
            Some((name, value)) => headers.push((name.to_string(), value.trim().to_string())),
            None => return Err(invalid(format!("bad header line: {line:?}"))),
        }
    }
    let mut req = Request {
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
        headers,
        body: Vec::new(),
    };

    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    let length = match req.header("content-length") {
        Some(cl) if !chunked => Some(
            cl.parse::<usize>()
                .map_err(|_| invalid(format!("bad Content-Length: {cl:?}")))?,
        ),
        _ => None,
    };
    let expects_body = chunked || length.is_some_and(|n| n > 0);
    if expects_body
        && req
            .header("expect")
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
    {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    if chunked {
        loop {
            let line = read_line(stream, buf).await?;
            let size_text = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| invalid(format!("bad chunk size line: {line:?}")))?;
            if size == 0 {
                while !read_line(stream, buf).await?.is_empty() {}
                break;
            }
            fill_to(stream, buf, size + 2).await?;
            req.body.extend(buf.drain(..size));
            buf.drain(..2);
        }
    } else if let Some(len) = length {
        fill_to(stream, buf, len).await?;
        req.body = buf.drain(..len).collect();
    }
    Ok(Some(req))
}
