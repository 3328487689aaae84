//! Upstream connections for HTTP/1 upgrade requests (WebSocket), shaped so
//! that Pingora 0.9 cannot tear a fresh tunnel down.
//!
//! The race (Pingora issue #946): an upgrade request has no body, so the
//! downstream half of `proxy_1to1` queues one end-of-body task before the
//! upstream half first runs. The upstream half `select!`s between reading
//! the response and taking that task, in random order when both are
//! ready. If it reads the `101` first, the connection is marked upgraded,
//! and the end-of-body task taken next is read as "the client closed the
//! tunnel": both directions end and the client gets `101` then EOF. A fast
//! upstream (or a gateway thread preempted at the wrong moment) makes the
//! `101` readable at that first `select!`, so some WebSockets die at birth.
//!
//! The fix stays outside Pingora: an upgrade request's upstream connection
//! is a [`YieldingSocket`], whose first read after a write returns
//! `Pending` once (waking itself at once). At the upstream half's first
//! `select!` the response branch is therefore never ready, and the queued
//! end-of-body task is taken first, the order Pingora handles correctly;
//! the next poll reads the `101` as usual. These connections are kept in a
//! pool group of their own ([`UPGRADE_GROUP`]) so a plain request never
//! rides on one and an upgrade never rides on a plain one.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora::{Error, ErrorType, OrErr, Result};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The connection-pool group of upgrade connections (any fixed value other
/// than the default 0 of plain peers).
pub const UPGRADE_GROUP: u64 = 0x7570_6772_6164_6531;

/// Connects upgrade requests' upstreams as [`YieldingSocket`]s, bounded by
/// the configured connect timeout (Pingora applies none to a custom
/// connector).
#[derive(Debug)]
pub struct UpgradeConnector {
    pub timeout: Duration,
}

#[async_trait]
impl L4Connect for UpgradeConnector {
    async fn connect(&self, addr: &SocketAddr) -> Result<Stream> {
        let SocketAddr::Inet(inet) = addr else {
            return Error::e_explain(ErrorType::ConnectError, "upgrade upstreams are TCP");
        };
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(*inet))
            .await
            .or_err(ErrorType::ConnectTimedout, "connecting an upgrade upstream")?
            .or_err(ErrorType::ConnectRefused, "connecting an upgrade upstream")?;
        let _ = tcp.set_nodelay(true);
        let socket = YieldingSocket {
            inner: tcp,
            yield_next_read: false,
        };
        Ok(Stream::from(VirtualSocketStream::new(Box::new(socket))))
    }
}

/// A TCP stream whose first read poll after a write is `Pending` once.
#[derive(Debug)]
pub struct YieldingSocket {
    inner: TcpStream,
    yield_next_read: bool,
}

impl VirtualSocket for YieldingSocket {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> io::Result<()> {
        match opt {
            VirtualSockOpt::NoDelay => self.inner.set_nodelay(true),
            // Keepalive (and whatever a later Pingora adds) needs raw
            // socket options; upgrade connections are supervised by the
            // gateway instead (see `tunnel`).
            _ => Ok(()),
        }
    }
}

impl AsyncRead for YieldingSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.yield_next_read {
            self.yield_next_read = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for YieldingSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.yield_next_read = true;
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_first_read_after_a_write_yields_once_then_reads() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            // The answer is on the wire before the client even asks.
            s.write_all(b"pong").await.unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.unwrap();
            b
        });
        let mut sock = YieldingSocket {
            inner: TcpStream::connect(addr).await.unwrap(),
            yield_next_read: false,
        };
        sock.write_all(b"ping").await.unwrap();
        assert!(sock.yield_next_read);
        let mut b = [0u8; 4];
        let mut cx = Context::from_waker(futures_noop_waker());
        let mut rb = ReadBuf::new(&mut b);
        assert!(Pin::new(&mut sock).poll_read(&mut cx, &mut rb).is_pending());
        sock.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"pong");
        assert_eq!(&server.await.unwrap(), b"ping");
    }

    fn futures_noop_waker() -> &'static std::task::Waker {
        std::task::Waker::noop()
    }
}
