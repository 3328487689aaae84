//! `/readyz` means ready (issue 27): 200 only when every configured
//! listener accepts connections, start-up is done and the store answers;
//! 503 naming the cause otherwise, from the first moment of a graceful
//! shutdown too. `/healthz` stays liveness only. (The store side: see
//! `postgres.rs::a_database_outage_fails_writes_not_token_checks`.)

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::bin::{self, Served};
use crate::common::{http, upstream, Builder, TestGateway};

/// `GET /readyz`: status and JSON body, `None` while nothing answers.
async fn readyz(admin: std::net::SocketAddr) -> Option<(u16, Value)> {
    let r = http::request(admin, "GET", "/readyz", &[], None)
        .await
        .ok()?;
    Some((r.status, r.json()))
}

/// Poll `/readyz` until `want` holds for its answer (bounded).
async fn readyz_until(
    admin: std::net::SocketAddr,
    what: &str,
    want: impl Fn(u16, &Value) -> bool,
) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    loop {
        if let Some((st, v)) = readyz(admin).await {
            if want(st, &v) {
                return (st, v);
            }
            last = Some((st, v));
        }
        assert!(Instant::now() < deadline, "{what}: last /readyz {last:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real binary, whose plain port is taken by another program between
/// the gateway's own start-up check and Pingora's bind (the test holds it:
/// `data_dir/admin.token` is a FIFO, which the gateway reads right after
/// that check, so the test knows when to take the port). Pingora's bind
/// fails and is retried; the admin listener runs. `/readyz` is 503 naming
/// `server.listen` all that time (another program accepting on that port
/// is not mistaken for the gateway), `/healthz` is 200; once the port is
/// released, Pingora's retry binds it and `/readyz` is 200, and the
/// listener serves.
///
/// Before: `/readyz` said 200 as soon as the store answered, and the
/// harness took a running admin listener for a started gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_is_not_bound_keeps_readyz_at_503_naming_it() {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = bin::write_config(dir.path(), &up.url(), "");
    std::fs::create_dir_all(&cfg.data_dir).unwrap();
    let fifo = cfg.data_dir.join("admin.token");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(st.success(), "mkfifo");

    let stderr_path = dir.path().join("stderr.log");
    let mut cmd = bin::command(&["serve", "--config"]);
    cmd.arg(&cfg.path)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    let mut served = Served::adopt(cmd.spawn().unwrap(), stderr_path, cfg.admin);

    // The gateway opens the FIFO for reading once its start-up check of
    // the listen addresses passed: a non-blocking open for writing
    // succeeds from then on (before, it fails with ENXIO).
    const O_NONBLOCK: i32 = 0o4000; // Linux
    let deadline = Instant::now() + bin::START_LIMIT;
    let mut writer = loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(O_NONBLOCK)
            .open(&fifo)
        {
            Ok(f) => break f,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(6), "open the FIFO: {e}");
                if let Some(st) = served.child.try_wait().unwrap() {
                    panic!("exited with {st}: {}", served.stderr());
                }
                assert!(Instant::now() < deadline, "{}", served.stderr());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    // Another program takes the plain port, and accepts on it.
    let squatter = TcpListener::bind(cfg.listen).unwrap();
    writer.write_all(b"test-admin-token-0123456789").unwrap();
    drop(writer);

    let (status, body) = readyz_until(cfg.admin, "the admin listener answers", |_, _| true).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "not_ready", "{body}");
    let message = body["message"].as_str().unwrap();
    let named = format!("server.listen ({})", cfg.listen);
    assert!(message.contains(&named), "{body}");
    assert!(
        body["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().contains(&named)),
        "{body}"
    );
    assert_eq!(
        http::request(cfg.admin, "GET", "/healthz", &[], None)
            .await
            .unwrap()
            .status,
        200
    );
    // Pingora retries the bind every second: it stays not ready while the
    // port is held (wait for two retries in its log, not for a time).
    let deadline = Instant::now() + Duration::from_secs(30);
    while served.stderr().matches("is in use, will try again").count() < 2 {
        assert!(Instant::now() < deadline, "{}", served.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = readyz(cfg.admin).await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body["message"].as_str().unwrap().contains(&named), "{body}");

    drop(squatter);
    let (_, body) = readyz_until(cfg.admin, "ready once the port is free", |st, _| st == 200).await;
    assert_eq!(body["status"], "ready");
    let r = http::get(cfg.listen, "/x", None).await;
    crate::common::assert_error(&r, 401, "unauthorized");
    assert!(served.child.try_wait().unwrap().is_none());
}

/// A graceful shutdown: `/readyz` is 503 (naming the drain) from its first
/// moment, while a request in flight still finishes with 200; a reload
/// before it leaves the gateway ready.
///
/// Before: `/readyz` said 200 until the admin listener closed, so a
/// balancer kept sending to a gateway on its way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_as_soon_as_a_graceful_shutdown_drains() {
    let mut gw = TestGateway::start_with(Builder {
        grace_period_secs: 60,
        routes: format!(
            "{}\n[[routes]]\nprefix = \"/__slow\"\nupstream = \"{{UP}}\"\nauth = \"public\"\n",
            crate::common::DEFAULT_ROUTES
        ),
        ..Default::default()
    })
    .await;
    let (st, body) = readyz(gw.admin_addr).await.unwrap();
    assert_eq!(
        (st, &body["status"]),
        (200, &Value::from("ready")),
        "{body}"
    );
    // A reload changes nothing about readiness.
    assert_eq!(gw.admin_reload().await.status, 200);
    assert_eq!(readyz(gw.admin_addr).await.unwrap().0, 200);

    // A request in flight: the upstream holds it for 4 s.
    let addr = gw.addr;
    let slow = tokio::spawn(async move { http::get(addr, "/__slow/4000", None).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.upstream.hits() == 0 {
        assert!(Instant::now() < deadline, "the request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let stopping = gw.stop_in_background();
    let (status, body) = readyz_until(gw.admin_addr, "503 while draining", |st, _| st != 200).await;
    assert!(
        !slow.is_finished(),
        "the request finished before /readyz turned 503"
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "not_ready");
    assert!(
        body["message"].as_str().unwrap().contains("draining"),
        "{body}"
    );
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "the request in flight finished: {r:?}");
    tokio::task::spawn_blocking(move || stopping.join().unwrap())
        .await
        .unwrap();
}

/// `Type=notify` (the systemd sample): the real binary sends `READY=1` to
/// `$NOTIFY_SOCKET` only once it is ready (at that moment `/readyz` is
/// already 200 and the public listener serves), and `STOPPING=1` when
/// SIGTERM begins the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_notifies_systemd_when_ready_and_when_stopping() {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = bin::write_config(dir.path(), &up.url(), "");
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(bin::START_LIMIT)).unwrap();
    let stderr_path = dir.path().join("stderr.log");
    let mut cmd = bin::command(&["serve", "--config"]);
    cmd.arg(&cfg.path)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    let mut served = Served::adopt(cmd.spawn().unwrap(), stderr_path, cfg.admin);
    let recv = move || {
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).expect("a notification");
        (String::from_utf8_lossy(&buf[..n]).into_owned(), sock)
    };
    let (first, sock) = tokio::task::spawn_blocking(recv).await.unwrap();
    assert_eq!(first, "READY=1", "{}", served.stderr());
    let (st, body) = readyz(cfg.admin).await.expect("the admin listener answers");
    assert_eq!(st, 200, "READY=1 before /readyz is 200: {body}");
    let r = http::get(cfg.listen, "/x", None).await;
    crate::common::assert_error(&r, 401, "unauthorized");

    served.signal("TERM").await;
    let recv = move || {
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let second = tokio::task::spawn_blocking(recv).await.unwrap();
    assert_eq!(second, "STOPPING=1", "{}", served.stderr());
    assert!(served.wait_exit(Duration::from_secs(30)).await.success());
}
