//! Upgraded connections (WebSocket) end with the session that opened them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// A WebSocket-style upstream: answers any request with 101 and then
/// echoes bytes until the gateway closes; counts connections still open.
struct TunnelUpstream {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TunnelUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn tunnel_upstream() -> TunnelUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let count = open.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut s, _)) = listener.accept().await {
            let count = count.clone();
            conns.spawn(async move {
                count.fetch_add(1, Ordering::SeqCst);
                let mut head = Vec::new();
                let mut b = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => {
                            count.fetch_sub(1, Ordering::SeqCst);
                            return;
                        }
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                    .await;
                loop {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&b[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                count.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    TunnelUpstream { addr, open, task }
}

async fn gateway(up: &TunnelUpstream) -> TestGateway {
    let routes = route("/ws", "required", "") + &route("/public", "public", "");
    TestGateway::start_with(Builder {
        routes: routes.replace("{UP}", &format!("http://{}", up.addr)),
        extra: "[tokens]\naccess_ttl_secs = 600\ntunnel_leeway_secs = 30\n".into(),
        ..Default::default()
    })
    .await
}

/// Opens an upgraded connection with `token` and proves bytes flow.
async fn open_tunnel(gw: &TestGateway, path: &str, token: Option<&str>) -> http::Conn {
    let mut conn = http::Conn::connect(gw.addr).await.unwrap();
    let auth = token.map(bearer);
    let mut headers = vec![("Upgrade", "websocket"), ("Connection", "Upgrade")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    let r = conn.request("GET", path, &headers, None).await.unwrap();
    assert_eq!(r.status, 101, "{r:?}");
    assert_alive(&mut conn).await;
    conn
}

/// Bytes sent through the tunnel come back from the upstream.
async fn assert_alive(conn: &mut http::Conn) {
    let before = conn.buffered().len();
    conn.write_partial(b"ping").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while conn.buffered().len() < before + 4 {
        assert!(
            !conn.is_closed_within(Duration::from_millis(50)).await,
            "tunnel closed while it should be open"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "no echo through the tunnel"
        );
    }
    assert!(conn.buffered().ends_with(b"ping"));
}

/// The tunnel is closed (EOF or reset) within a few supervision ticks.
async fn assert_closed(conn: &mut http::Conn, what: &str) {
    assert!(
        conn.is_closed_within(Duration::from_secs(5)).await,
        "{what}: the tunnel stayed open"
    );
}

/// Session not terminated on logout or disable for long-lived connections
/// (ASVS 4.0.3 V3.3.1 / V3.3.4; CWE-613 insufficient session expiration;
/// the WebSocket-after-logout class): a WebSocket opened with a token stays
/// usable after logout unless the gateway closes it. Logout closes that
/// session's tunnel (and the upstream's end of it), a second session's
/// tunnel stays open, and disabling the user closes it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_close_when_their_session_is_revoked() {
    let up = tunnel_upstream().await;
    let gw = gateway(&up).await;
    let a = gw.signup("ws@example.com").await;
    let b = gw.signin("ws@example.com", PASSWORD).await;
    let mut ta = open_tunnel(&gw, "/ws/chat", Some(&a.access)).await;
    let mut tb = open_tunnel(&gw, "/ws/chat", Some(&b.access)).await;
    assert_eq!(up.open.load(Ordering::SeqCst), 2);

    let r = gw
        .post(
            "/auth/logout",
            json!({ "refresh_token": a.refresh }),
            Some(&a.access),
        )
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_closed(&mut ta, "after logout").await;
    // The other session's tunnel is untouched.
    assert_alive(&mut tb).await;
    // The upstream's half of the closed tunnel is gone as well.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while up.open.load(Ordering::SeqCst) != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "upstream side stayed open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Disabling the user (admin API, as the CLI does) ends every tunnel.
    let token = std::fs::read_to_string(gw.data_dir().join("admin.token")).unwrap();
    let r = http::request(
        gw.admin_addr,
        "POST",
        "/admin/users",
        &[
            ("authorization", &format!("Bearer {}", token.trim())),
            ("content-type", "application/json"),
        ],
        Some(
            json!({ "op": "disable", "email": "ws@example.com" })
                .to_string()
                .as_bytes(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_closed(&mut tb, "after disable").await;
}

/// A token's expiry must bound the connection it opened (ASVS 4.0.3 V3.3.1;
/// CWE-613): a tunnel lives until the access token's `exp` plus
/// `tokens.tunnel_leeway_secs` on the gateway clock, then is closed.
/// Anonymous tunnels on public routes have no session and are not cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_close_at_token_expiry_plus_leeway() {
    let up = tunnel_upstream().await;
    let gw = gateway(&up).await;
    let s = gw.signup("exp@example.com").await;
    let mut t = open_tunnel(&gw, "/ws", Some(&s.access)).await;
    let mut anon = open_tunnel(&gw, "/public/ws", None).await;

    // exp = now + 600; leeway 30. Just before the cap: still open after
    // more than one supervision tick.
    gw.clock.advance(600 + 29);
    assert!(!t.is_closed_within(Duration::from_millis(1500)).await);
    assert_alive(&mut t).await;
    gw.clock.advance(2);
    assert_closed(&mut t, "past exp + leeway").await;
    assert_alive(&mut anon).await;
}
