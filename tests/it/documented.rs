//! Behaviour the README states that no other module exercises: where the
//! config comes from, the data dir's modes, `PORTCULLIS_DATABASE_URL`,
//! SIGINT, TLS 1.2 clients, `user add` without a password, the log mail
//! transport, the per-read timeout on proxied bodies, the lockout's failure
//! window, and a graceful shutdown that cuts off what outlives its grace.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::bin::{self, Served};
use crate::common::http;
use crate::common::*;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

async fn register(addr: SocketAddr, email: &str) -> http::Response {
    http::post_json(
        addr,
        "/auth/register",
        &json!({ "email": email, "password": PASSWORD, "password_confirm": PASSWORD }),
        None,
    )
    .await
}

async fn login(addr: SocketAddr, email: &str, password: &str) -> http::Response {
    http::post_json(
        addr,
        "/auth/login",
        &json!({ "email": email, "password": password }),
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_comes_from_the_flag_then_the_env_then_the_working_directory() {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    for d in [&a, &b, &c] {
        std::fs::create_dir(d).unwrap();
    }
    // ./gateway.toml of the working directory `a`.
    let cwd = bin::write_config(&a, &up.url(), "");
    let env = bin::write_config(&b, &up.url(), "");
    let flag = bin::write_config(&c, &up.url(), "");
    let stderr = dir.path().join("stderr");

    let not_listening = |addrs: [SocketAddr; 2]| {
        for a in addrs {
            assert!(
                std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_err(),
                "{a} is listening too"
            );
        }
    };

    // No flag, no env: ./gateway.toml.
    let mut cmd = bin::command(&["serve"]);
    cmd.current_dir(&a);
    let mut s = Served::spawn(cmd, stderr.clone(), cwd.admin).await;
    not_listening([env.listen, flag.listen]);
    s.crash();
    // The env beats ./gateway.toml.
    let mut cmd = bin::command(&["serve"]);
    cmd.current_dir(&a).env("PORTCULLIS_CONFIG", &env.path);
    let mut s = Served::spawn(cmd, stderr.clone(), env.admin).await;
    not_listening([cwd.listen, flag.listen]);
    s.crash();
    // The flag beats both.
    let mut cmd = bin::command(&["serve", "--config"]);
    cmd.arg(&flag.path)
        .current_dir(&a)
        .env("PORTCULLIS_CONFIG", &env.path);
    let mut s = Served::spawn(cmd, stderr.clone(), flag.admin).await;
    not_listening([cwd.listen, env.listen]);
    s.crash();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_any_config_file_the_built_in_defaults_apply() {
    let dir = tempfile::tempdir().unwrap();
    // check-config in a directory without gateway.toml: the defaults are valid.
    let mut cmd = bin::command(&["check-config"]);
    cmd.current_dir(dir.path());
    let out = bin::run_async(cmd, None, bin::CLI_LIMIT).await;
    assert!(out.ok(), "{out:?}");
    // Serving the defaults binds fixed ports (8080, 8443, 9100). Where one
    // is taken (by something of someone else's), the defaults show in the
    // refusal instead: the gateway names the default address it could not
    // bind.
    // Another test process (a second suite) may serve them at this very
    // moment: one at a time on this machine.
    let _defaults =
        tokio::task::spawn_blocking(|| crate::common::ports::machine_lock("default-ports"))
            .await
            .unwrap();
    let defaults: [SocketAddr; 3] = [
        "127.0.0.1:8080".parse().unwrap(),
        "0.0.0.0:8443".parse().unwrap(),
        "127.0.0.1:9100".parse().unwrap(),
    ];
    let taken: Vec<SocketAddr> = defaults
        .iter()
        .copied()
        .filter(|a| std::net::TcpListener::bind(a).is_err())
        .collect();
    let mut cmd = bin::command(&["serve"]);
    cmd.current_dir(dir.path());
    if taken.is_empty() {
        let mut s = Served::spawn(cmd, dir.path().join("stderr"), defaults[2]).await;
        s.crash();
    } else {
        let out = bin::run_async(cmd, None, Duration::from_secs(60)).await;
        assert!(!out.ok(), "served although {taken:?} is taken: {out:?}");
        assert!(
            taken
                .iter()
                .any(|a| out.stderr.contains(&format!(":{}", a.port()))),
            "the refusal names no default port of {taken:?}: {}",
            out.stderr
        );
    }
    // The default data dir and dev certificate, relative to the working dir.
    assert_eq!(mode(&dir.path().join("data")), 0o700);
    assert!(dir.path().join("certs/dev-cert.pem").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_is_0700_its_secrets_0600_and_the_database_url_moves_the_db() {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = bin::write_config(dir.path(), &up.url(), "");
    let elsewhere = dir.path().join("elsewhere/users.db");
    let mut cmd = bin::command(&["serve", "--config"]);
    cmd.arg(&cfg.path).env(
        "PORTCULLIS_DATABASE_URL",
        format!("sled:{}", elsewhere.display()),
    );
    let mut s = Served::spawn(cmd, dir.path().join("stderr"), cfg.admin).await;
    assert_eq!(register(cfg.listen, "dburl@example.com").await.status, 201);
    assert_eq!(mode(&cfg.data_dir), 0o700);
    for f in std::fs::read_dir(&cfg.data_dir).unwrap() {
        let f = f.unwrap();
        if f.file_type().unwrap().is_file() && f.file_name() != "portcullis.pid" {
            assert_eq!(mode(&f.path()), 0o600, "{}", f.path().display());
        }
    }
    assert!(elsewhere.is_dir(), "the database is not at the URL's path");
    assert!(
        !cfg.data_dir.join("db").exists(),
        "a database was made in data_dir too"
    );
    s.crash();
    // Without the variable the gateway would use data_dir/db, a database
    // this data dir never held: it refuses, saying what to do.
    let mut cmd = bin::command(&["serve", "--config"]);
    cmd.arg(&cfg.path);
    let out = bin::run_async(cmd, None, Duration::from_secs(30)).await;
    let err = &out.stderr;
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("store.id") && err.contains("refusing to start"),
        "{err}"
    );
    // Removing the marker (as the message says) starts afresh there, where
    // the user is not.
    std::fs::remove_file(cfg.data_dir.join("store.id")).unwrap();
    let _s = Served::start(&cfg).await;
    assert_error(
        &login(cfg.listen, "dburl@example.com", PASSWORD).await,
        401,
        "invalid_credentials",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_shuts_down_gracefully() {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = bin::write_config(dir.path(), &up.url(), "");
    let mut s = Served::start(&cfg).await;
    s.signal("INT").await;
    let status = s.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", s.stderr());
    assert!(s.stderr().contains("SIGINT"), "{}", s.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_1_2_only_client_is_served() {
    let gw = TestGateway::start().await;
    let pem = std::fs::read(gw.cert_path()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(gw.tls_addr).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .expect("TLS 1.2 handshake");
        let version = tls.get_ref().1.protocol_version();
        tls.write_all(
            b"GET /public/tls12 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        (version, String::from_utf8_lossy(&out).into_owned())
    };
    let (version, text) = tokio::time::timeout(http::TIMEOUT, exchange)
        .await
        .expect("TLS 1.2 exchange timed out");
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_2));
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("/public/tls12"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_add_without_a_password_makes_an_account_that_needs_a_reset() {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = bin::write_config(dir.path(), &up.url(), "[throttle]\nauth_per_minute = 0\n");
    // No --password-stdin, and stdin is not a terminal: no prompt.
    let mut cmd = bin::command(&["user", "add", "--email", "nopw@example.com", "--config"]);
    cmd.arg(&cfg.path);
    let out = bin::run_async(cmd, Some(String::new()), bin::CLI_LIMIT).await;
    assert!(out.ok(), "{out:?}");
    let mut cmd = bin::command(&["user", "list", "--config"]);
    cmd.arg(&cfg.path);
    let out = bin::run_async(cmd, None, bin::CLI_LIMIT).await;
    assert!(out.stdout.contains("nopw@example.com"), "{out:?}");
    let _s = Served::start(&cfg).await;
    for pw in ["", PASSWORD, "nopw@example.com"] {
        assert_eq!(login(cfg.listen, "nopw@example.com", pw).await.status, 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_mail_transport_writes_a_working_link() {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = bin::write_config(
        dir.path(),
        &up.url(),
        "[mail]\ntransport = \"log\"\nlink_base_url = \"https://gateway.test\"\n",
    );
    let s = Served::start(&cfg).await;
    assert_eq!(register(cfg.listen, "logged@example.com").await.status, 201);
    let deadline = Instant::now() + Duration::from_secs(10);
    let token = loop {
        let log = s.stderr();
        if let Some(i) = log.find("https://gateway.test/auth/email/verify?token=") {
            let rest = &log[i + "https://gateway.test/auth/email/verify?token=".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .unwrap_or(rest.len());
            break rest[..end].to_string();
        }
        assert!(Instant::now() < deadline, "no link in the log:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let r = http::post_json(
        cfg.listen,
        "/auth/email/verify",
        &json!({ "token": token }),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["user"]["email_verified"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_bodies_get_a_per_read_timeout_not_a_total_one() {
    let gw = TestGateway::start_with(Builder {
        extra: "[limits]\ndownstream_read_timeout_secs = 1\n".into(),
        ..Default::default()
    })
    .await;
    // A slow but steady upload: 6 parts 400 ms apart (2.4 s in all, more
    // than the timeout) arrives whole.
    let mut conn = http::Conn::connect(gw.addr).await.unwrap();
    conn.write_partial(
        b"POST /public/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for b in b"abcdef" {
        tokio::time::sleep(Duration::from_millis(400)).await;
        conn.write_partial(&[*b]).await.unwrap();
    }
    let r = conn.read_response(false).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["body"], "abcdef");

    // A body that stops arriving is cut after one read timeout.
    let hits = gw.upstream.hits();
    let mut conn = http::Conn::connect(gw.addr).await.unwrap();
    conn.write_partial(
        b"POST /public/stall HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nConnection: close\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let t = Instant::now();
    assert!(
        conn.is_closed_within(Duration::from_secs(4)).await,
        "a stalled body kept the connection open"
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3500),
        "cut after {took:?}"
    );
    // The upstream never got a complete request.
    let got = gw.upstream.hits() - hits;
    assert!(got <= 1);
    if got == 1 {
        let last = gw.upstream.last_request().unwrap();
        assert_ne!(last["body"].as_str().unwrap().len(), 100);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_only_within_the_failure_window() {
    let gw = TestGateway::start_with(Builder {
        extra: "[throttle]\nauth_per_minute = 0\nmax_failed_logins = 3\nfailure_window_secs = 60\nlockout_secs = 300\n".into(),
        ..Default::default()
    })
    .await;
    gw.signup("window@example.com").await;
    let wrong = |gw: &TestGateway| {
        let addr = gw.addr;
        async move { login(addr, "window@example.com", "wrong password 1").await }
    };
    // Two failures, then the window passes: they no longer count.
    assert_eq!(wrong(&gw).await.status, 401);
    assert_eq!(wrong(&gw).await.status, 401);
    gw.clock.advance(61);
    assert_eq!(wrong(&gw).await.status, 401);
    assert_eq!(wrong(&gw).await.status, 401);
    // Four failures in all, but at most two in one window: not locked.
    assert_eq!(
        login(gw.addr, "window@example.com", PASSWORD).await.status,
        200
    );
    // Three inside one window lock the account.
    gw.clock.advance(61);
    for _ in 0..3 {
        assert_eq!(wrong(&gw).await.status, 401);
    }
    assert_error(
        &login(gw.addr, "window@example.com", PASSWORD).await,
        429,
        "too_many_requests",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_off_what_outlives_the_grace_period_and_lets_the_rest_finish() {
    let mut routes = DEFAULT_ROUTES.to_string();
    routes.push_str("\n[[routes]]\nprefix = \"/__slow\"\nupstream = \"{UP}\"\nauth = \"public\"\n");
    let gw = TestGateway::start_with(Builder {
        routes,
        grace_period_secs: 1,
        ..Default::default()
    })
    .await;
    let addr = gw.addr;
    let long =
        tokio::spawn(async move { http::request(addr, "GET", "/__slow/8000", &[], None).await });
    let short = tokio::spawn(async move { http::get(addr, "/__slow/400", None).await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.upstream.hits() < 2 {
        assert!(Instant::now() < deadline, "the requests never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let stopped = tokio::task::spawn_blocking(move || {
        let mut gw = gw;
        gw.stop();
        started.elapsed()
    })
    .await
    .unwrap();
    assert_eq!(
        short.await.unwrap().status,
        200,
        "the short request was cut"
    );
    let long = long.await.unwrap();
    assert!(
        long.as_ref().map_or(true, |r| r.status != 200),
        "the long request finished: {long:?}"
    );
    // The grace period (1 s), plus the services' own stop.
    assert!(
        stopped >= Duration::from_millis(900) && stopped < Duration::from_millis(2500),
        "shutdown took {stopped:?}"
    );
}

/// `limits.h2_idle_timeout_secs`: an HTTP/2 connection with no request for
/// that long is closed by the gateway (Pingora's own timer, so this waits
/// for real: the setting is 1 s here), while one in use is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed() {
    let gw = TestGateway::start_with(Builder {
        extra: "[limits]\nh2_idle_timeout_secs = 1\n".into(),
        ..Default::default()
    })
    .await;
    // In use: a request gets its answer.
    let (mut client, conn) = crate::common::h2_connect(&gw).await;
    let req = ::http::Request::builder()
        .uri(format!("https://localhost:{}/public/x", gw.tls_addr.port()))
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    // Then idle: the server ends the connection within a few seconds.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), conn).await;
    assert!(
        ended.is_ok(),
        "an idle HTTP/2 connection stayed open for 10 s"
    );
}
