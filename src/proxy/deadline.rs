//! A whole-header deadline for downstream HTTP/1 connections (slowloris).
//!
//! Pingora 0.9 only bounds each single read of a request header (the 60 s
//! keep-alive timeout, or the session read timeout): a client that sends one
//! byte every few seconds keeps a connection and a task forever. This module
//! wraps the proxy application:
//!
//! - [`HeaderDeadline`] takes over Pingora's HTTP/1 connection loop (the same
//!   few lines as `pingora_core::apps`' `ServerApp` impl) so it knows where
//!   each request on a connection begins. HTTP/2 connections are handed to
//!   Pingora untouched.
//! - [`DeadlineStream`] wraps the connection's stream. From the moment a
//!   request is due, it watches the bytes read for the end of the header (an
//!   empty line) and fails the read with `TimedOut` once the deadline passes
//!   first. On a fresh connection the clock starts at accept (after the TLS
//!   handshake, whose ClientHello has a deadline of its own:
//!   `crate::tls::ClientHelloDeadline`); on a reused keep-alive connection it starts at the first
//!   byte of the next request, so idle keep-alive time stays governed by
//!   Pingora's keep-alive timeout.
//!
//! Request bodies are not covered here: the proxy sets a per-read timeout on
//! every body, and local `/auth/*` bodies also get a whole-body deadline.
//!
//! The stream also carries the connection's [`TunnelSwitch`], which closes
//! an upgraded connection whose session has ended (see [`super::tunnel`]).
//!
//! **Pingora's own error answers.** When Pingora rejects a request before
//! any hook of ours runs (a header it cannot parse, an ambiguous authority,
//! a header block over its size limit, `CONNECT`), it writes a 4xx with an
//! empty body itself (`pingora-proxy` 0.9.1 `src/lib.rs`,
//! `handle_new_request`: `respond_error(400)` / `respond_error(405)`), with
//! no hook in between. The gateway's `request_filter` marks each request it
//! sees ([`DeadlineStream::mark_handled`]); a response that begins while
//! the current request is unmarked can only be such an answer, and is
//! replaced, on its way out, by the same status with the contract's JSON
//! error body ([`own_error_response`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::conn_limit::ConnLimit;
use super::tunnel::TunnelSwitch;

/// Pingora's default idle time between keep-alive requests, kept as is.
const KEEPALIVE_SECS: u64 = 60;

/// Wraps an HTTP application (the Pingora proxy) with a whole-header deadline.
/// Also holds each connection's permit from `limits.max_connections`.
pub struct HeaderDeadline<A> {
    inner: Arc<A>,
    timeout: Duration,
    connections: Arc<ConnLimit>,
}

impl<A> HeaderDeadline<A> {
    pub fn new(inner: A, timeout: Duration, connections: Arc<ConnLimit>) -> Self {
        Self {
            inner: Arc::new(inner),
            timeout,
            connections,
        }
    }
}

#[async_trait]
impl<A> ServerApp for HeaderDeadline<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Over the cap: dropping the stream closes the connection.
        let _permit = self.connections.try_acquire()?;
        let opts = self.inner.server_options();
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2))
            || opts.is_some_and(|o| o.h2c || o.force_custom)
            || matches!(stream.selected_alpn_proto(), Some(ALPN::Custom(_)));
        if h2 {
            return ServerApp::process_new(&self.inner, stream, shutdown).await;
        }
        let rearm = Arc::new(AtomicBool::new(false));
        let stream: Stream = Box::new(DeadlineStream::new(stream, self.timeout, rearm.clone()));
        let mut session = ServerSession::new_http1(stream);
        if *shutdown.borrow() {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(KEEPALIVE_SECS));
        }
        session.set_keepalive_reuses_remaining(opts.and_then(|o| o.keepalive_request_limit));
        let mut result = self.inner.process_new_http(session, shutdown).await;
        while let Some((stream, settings)) = result.map(|r| r.consume()) {
            // The next bytes on this connection start a new request header.
            rearm.store(true, Ordering::Release);
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            result = self.inner.process_new_http(session, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests on a reused connection: the clock starts at the
    /// first byte.
    Pending,
    /// Reading a header that must be complete by then.
    Armed(Instant),
    /// The header is complete (body, upgrade, response).
    Off,
}

/// Finds the end of an HTTP/1 header: an empty line after at least one
/// non-empty one (leading empty lines are skipped, as the parser does).
#[derive(Debug, Default, Clone, Copy)]
struct HeaderEnd {
    started: bool,
    /// 0 = inside a line, 1 = just after LF, 2 = after LF then CR.
    state: u8,
}

impl HeaderEnd {
    /// Feed bytes; true once the header is complete. Inside a line it
    /// jumps to the next LF (`memchr`): this sees every header byte.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut rest = bytes;
        if !self.started {
            let Some(i) = rest.iter().position(|&b| b != b'\r' && b != b'\n') else {
                return false;
            };
            rest = &rest[i..];
            self.started = true;
        }
        while let Some((&b, tail)) = rest.split_first() {
            if self.state == 0 {
                let Some(i) = memchr::memchr(b'\n', rest) else {
                    return false;
                };
                self.state = 1;
                rest = &rest[i + 1..];
                continue;
            }
            rest = tail;
            self.state = match (self.state, b) {
                (1 | 2, b'\n') => return true,
                (_, b'\n') => 1,
                (1, b'\r') => 2,
                _ => 0,
            };
        }
        false
    }
}

/// A downstream stream that fails reads once a request header is overdue.
#[derive(Debug)]
pub struct DeadlineStream {
    inner: Stream,
    timeout: Duration,
    phase: Phase,
    scan: HeaderEnd,
    rearm: Arc<AtomicBool>,
    sleep: Option<Pin<Box<Sleep>>>,
    tunnel: Arc<TunnelSwitch>,
    /// The current request reached the gateway's hooks.
    handled: AtomicBool,
    /// A replacement for Pingora's own error answer, and how much of it
    /// has been written.
    pending: Option<(Vec<u8>, usize)>,
    /// Pingora's answer was replaced: drop whatever else it writes for it.
    replaced: bool,
}

/// The JSON error answer that replaces Pingora's own `head` (a 4xx with an
/// empty body), or `None` when `head` is not one.
pub fn own_error_response(head: &[u8]) -> Option<Vec<u8>> {
    if head.len() < 12 || !head.starts_with(b"HTTP/1.") || &head[8..10] != b" 4" {
        return None;
    }
    let status: u16 = std::str::from_utf8(&head[9..12]).ok()?.parse().ok()?;
    let (code, message) = match status {
        405 => ("method_not_allowed", "Method not allowed."),
        408 => ("request_timeout", "The request was not received in time."),
        413 => ("payload_too_large", "The request body is too large."),
        431 => (
            "request_header_fields_too_large",
            "The request headers are too large.",
        ),
        _ => ("bad_request", "The request could not be parsed."),
    };
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let mut out = head[..line_end].to_vec();
    out.extend_from_slice(
        format!(
            "\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             cache-control: no-store\r\nx-content-type-options: nosniff\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    Some(out)
}

impl DeadlineStream {
    fn new(inner: Stream, timeout: Duration, rearm: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            timeout,
            phase: Phase::Armed(Instant::now() + timeout),
            scan: HeaderEnd::default(),
            rearm,
            sleep: None,
            tunnel: Arc::default(),
            handled: AtomicBool::new(false),
            pending: None,
            replaced: false,
        }
    }

    /// The gateway's hooks have seen the current request: whatever is
    /// written for it is the gateway's own.
    pub fn mark_handled(&self) {
        self.handled.store(true, Ordering::Relaxed);
    }

    /// Write out a replacement answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((buf, off)) = &mut self.pending {
            if *off >= buf.len() {
                self.pending = None;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &buf[*off..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *off += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// The switch that closes this connection once it is a tunnel.
    pub fn tunnel(&self) -> &Arc<TunnelSwitch> {
        &self.tunnel
    }

    fn observe(&mut self, bytes: &[u8]) {
        if self.phase == Phase::Pending {
            self.phase = Phase::Armed(Instant::now() + self.timeout);
        }
        if matches!(self.phase, Phase::Armed(_)) && self.scan.feed(bytes) {
            self.phase = Phase::Off;
            self.sleep = None;
        }
    }
}

fn overdue() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "request header not received in time",
    )
}

impl AsyncRead for DeadlineStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.tunnel.check(cx) {
            return Poll::Ready(Err(e));
        }
        if this.rearm.swap(false, Ordering::AcqRel) {
            this.handled.store(false, Ordering::Relaxed);
            this.replaced = false;
            this.phase = Phase::Pending;
            this.scan = HeaderEnd::default();
            this.sleep = None;
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.phase != Phase::Off && buf.filled().len() > before {
                    this.observe(&buf.filled()[before..]);
                }
                if let Phase::Armed(deadline) = this.phase {
                    if Instant::now() >= deadline {
                        return Poll::Ready(Err(overdue()));
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if let Phase::Armed(deadline) = this.phase {
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if sleep.deadline() != deadline {
                        sleep.as_mut().reset(deadline);
                    }
                    if sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(overdue()));
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for DeadlineStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.tunnel.check(cx) {
            return Poll::Ready(Err(e));
        }
        if !this.handled.load(Ordering::Relaxed) {
            if this.replaced {
                return Poll::Ready(Ok(buf.len()));
            }
            if let Some(answer) = own_error_response(buf) {
                this.replaced = true;
                this.pending = Some((answer, 0));
                // The rest goes out on flush/shutdown if it does not now.
                if let Poll::Ready(Err(e)) = this.poll_pending(cx) {
                    return Poll::Ready(Err(e));
                }
                return Poll::Ready(Ok(buf.len()));
            }
        }
        if this.pending.is_some() {
            std::task::ready!(this.poll_pending(cx))?;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.tunnel.check(cx) {
            return Poll::Ready(Err(e));
        }
        std::task::ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if !self.handled.load(Ordering::Relaxed) || self.pending.is_some() {
            // Pingora's own answer is written whole; see `poll_write`.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return self.poll_write(cx, first);
        }
        let this = self.get_mut();
        if let Err(e) = this.tunnel.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for DeadlineStream {
    async fn shutdown(&mut self) {
        // A replacement answer still unwritten goes first.
        let _ = std::future::poll_fn(|cx| self.poll_pending(cx)).await;
        self.inner.shutdown().await
    }
}

impl UniqueID for DeadlineStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for DeadlineStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for DeadlineStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for DeadlineStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for DeadlineStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, socket_digest: SocketDigest) {
        self.inner.set_socket_digest(socket_digest)
    }
}

#[async_trait]
impl Peek for DeadlineStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::own_error_response;

    #[test]
    fn pingoras_empty_4xx_becomes_the_json_error() {
        let head = b"HTTP/1.1 400 Bad Request\r\nServer: Pingora\r\nContent-Length: 0\r\n\r\n";
        let out = String::from_utf8(own_error_response(head).unwrap()).unwrap();
        let (h, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(h.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{h}");
        assert!(
            h.contains(&format!("content-length: {}", body.len())),
            "{h}"
        );
        assert!(h.contains("connection: close"), "{h}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "bad_request");
        let out = own_error_response(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n").unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("method_not_allowed"));
        // Anything else is left alone.
        assert!(own_error_response(b"HTTP/1.1 200 OK\r\n\r\n").is_none());
        assert!(own_error_response(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").is_none());
        assert!(own_error_response(b"{\"a\":1}").is_none());
        assert!(own_error_response(b"HTTP/1.1 4").is_none());
    }

    use super::HeaderEnd;

    fn ends(chunks: &[&[u8]]) -> bool {
        let mut h = HeaderEnd::default();
        chunks.iter().any(|c| h.feed(c))
    }

    #[test]
    fn finds_the_end_of_a_header() {
        assert!(ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]));
        assert!(ends(&[
            b"GET / HTTP/1.1\r\n",
            b"Host: a\r",
            b"\n",
            b"\r",
            b"\n"
        ]));
        assert!(ends(&[b"GET / HTTP/1.1\nHost: a\n\n"]));
        assert!(!ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n"]));
        assert!(!ends(&[b"GET / HTTP/1.1\r\nHost: a\r\nX: \r\r\n"]));
    }

    /// The scanner before it skipped to each LF: one byte at a time.
    fn ends_bytewise(bytes: &[u8]) -> Option<usize> {
        let (mut started, mut state) = (false, 0u8);
        for (i, &b) in bytes.iter().enumerate() {
            if !started {
                if b == b'\r' || b == b'\n' {
                    continue;
                }
                started = true;
            }
            state = match (state, b) {
                (1 | 2, b'\n') => return Some(i),
                (_, b'\n') => 1,
                (1, b'\r') => 2,
                _ => 0,
            };
        }
        None
    }

    #[test]
    fn skipping_to_each_line_feed_agrees_with_the_bytewise_scan() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..24);
            let bytes: Vec<u8> = (0..len)
                .map(|_| [b'a', b'\r', b'\n', b' '][rng.gen_range(0..4)])
                .collect();
            // The same bytes in random chunks: done exactly when the
            // bytewise scan is done within what was fed.
            let want = ends_bytewise(&bytes);
            let mut h = HeaderEnd::default();
            let (mut at, mut got) = (0, None);
            while at < bytes.len() && got.is_none() {
                let n = rng.gen_range(1..=bytes.len() - at);
                if h.feed(&bytes[at..at + n]) {
                    got = Some(at + n);
                }
                at += n;
            }
            match (want, got) {
                (None, None) => {}
                (Some(i), Some(end)) => assert!(i < end, "{bytes:?}"),
                _ => panic!("{bytes:?}: bytewise {want:?}, chunked {got:?}"),
            }
        }
    }

    #[test]
    fn leading_empty_lines_do_not_end_a_header() {
        assert!(!ends(&[b"\r\n\r\n\n\n", b"GET / HTTP/1.1\r\n"]));
        assert!(ends(&[b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"]));
    }
}
