//! README claims that had no test of their own (issue 15's audit; the whole
//! mapping is `docs/claims.md`). Each test fails when the behaviour it names
//! is removed.

use std::time::{Duration, Instant};

use crate::common::bin::{self, Served};
use crate::common::*;

/// The threads of process `pid` whose name (`comm`, cut by the kernel at 15
/// bytes) is `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/task: {e}"))
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .count()
}

/// README, `server.threads`: "worker threads per listener". Pingora names
/// each listener's runtime threads after its service ("portcullis http",
/// "portcullis admin"); with `threads = 1` and `threads = 3` the real
/// binary runs exactly that many on the plain listener and on the admin
/// listener, and the plain listener serves requests. Ignoring the key would
/// leave the default 2 in both runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_threads_sets_the_worker_threads_of_every_listener() {
    let up = upstream::start().await;
    for n in [1usize, 3] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = bin::write_config(dir.path(), &up.url(), &format!("threads = {n}\n"));
        let served = Served::start(&cfg).await;
        let pid = served.child.id();
        // "portcullis admin" is 16 bytes: the kernel keeps 15.
        for name in ["portcullis http", "portcullis admi"] {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let count = threads_named(pid, name);
                if count == n {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "threads = {n}: {count} threads named {name:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let r = http::get(cfg.listen, "/x", None).await;
        assert_error(&r, 401, "unauthorized");
        assert_eq!(threads_named(pid, "portcullis http"), n, "after a request");
    }
}

/// The first flight of a real TLS client (its ClientHello record), captured
/// over an in-memory pipe.
async fn client_hello(gw: &TestGateway) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let config = http::tls_client_config(&gw.cert_path(), &["http/1.1"]).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost".to_string()).unwrap();
    let (client, mut server) = tokio::io::duplex(64 * 1024);
    let connecting = tokio::spawn(async move {
        let _ = tokio_rustls::TlsConnector::from(config)
            .connect(name, client)
            .await;
    });
    let mut hello = Vec::new();
    let mut buf = [0u8; 4096];
    while hello.len() < 5 || hello.len() < 5 + u16::from_be_bytes([hello[3], hello[4]]) as usize {
        let n = tokio::time::timeout(Duration::from_secs(5), server.read(&mut buf))
            .await
            .expect("the client sends its hello")
            .unwrap();
        assert!(n > 0, "the client closed before its hello");
        hello.extend_from_slice(&buf[..n]);
    }
    connecting.abort();
    assert_eq!(hello[0], 0x16, "not a handshake record");
    hello
}

/// README "Slow clients": a request's headers must arrive within
/// `limits.downstream_read_timeout_secs` from accept, on TLS too; before
/// the header, the client's ClientHello must arrive within the same
/// deadline (the rest of the handshake keeps Pingora's fixed 60 s). With a
/// 2 s deadline, a connection to the TLS port that sends nothing and one
/// that sends half a ClientHello are both still open at 1 s and closed
/// before 5 s (Pingora alone keeps them 60 s); a ClientHello fragmented
/// over two records, the second sent a second later, still gets the
/// server's answer (a handshake record), and a normal HTTPS request is
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_hello_must_arrive_within_the_header_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = TestGateway::start_with(Builder {
        extra: "[limits]\ndownstream_read_timeout_secs = 2\n".into(),
        ..Default::default()
    })
    .await;
    let hello = client_hello(&gw).await;

    // Nothing sent, and half a hello: cut at the deadline, not before.
    let stalled = |part: Vec<u8>| {
        let addr = gw.tls_addr;
        async move {
            let mut conn = http::Conn::connect(addr).await.unwrap();
            if !part.is_empty() {
                conn.write_partial(&part).await.unwrap();
            }
            let what = format!("{} bytes of a ClientHello", part.len());
            assert!(
                !conn.is_closed_within(Duration::from_secs(1)).await,
                "{what}: closed before the deadline"
            );
            assert!(
                conn.is_closed_within(Duration::from_secs(4)).await,
                "{what}: still open 5 s after accept (deadline 2 s)"
            );
            assert!(conn.buffered().is_empty(), "{what}: {:?}", conn.buffered());
        }
    };
    // A hello in two records, the second a second later.
    let fragmented = {
        let addr = gw.tls_addr;
        let payload = hello[5..].to_vec();
        let record = |p: &[u8]| {
            let mut r = vec![0x16, hello[1], hello[2]];
            r.extend_from_slice(&(p.len() as u16).to_be_bytes());
            r.extend_from_slice(p);
            r
        };
        let (first, second) = (record(&payload[..40]), record(&payload[40..]));
        async move {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.write_all(&first).await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
            tcp.write_all(&second).await.unwrap();
            let mut b = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut b))
                .await
                .expect("the server answers a complete hello")
                .unwrap();
            assert_eq!((n, b[0]), (1, 0x16), "not a handshake record");
        }
    };
    let served = async {
        let r = http::tls_get(gw.tls_addr, "localhost", &gw.cert_path(), "/public/ok")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    };
    tokio::join!(
        stalled(Vec::new()),
        stalled(hello[..hello.len() / 2].to_vec()),
        fragmented,
        served
    );
}

/// README, `passwords.argon2_*`: "OWASP minimum enforced". Below 19456 KiB
/// or 2 iterations `check-config` names each key and exits 2; at the
/// minimum the file is valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argon2_costs_below_the_owasp_minimum_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let check = |extra: &str| {
        let cfg = bin::write_config(dir.path(), "http://127.0.0.1:9", extra);
        let mut cmd = bin::command(&["check-config", "--config"]);
        cmd.arg(&cfg.path);
        bin::run_async(cmd, None, bin::CLI_LIMIT)
    };
    let low = check("[passwords]\nargon2_memory_kib = 19455\nargon2_iterations = 1\n").await;
    assert_eq!(low.status.code(), Some(2), "{low:?}");
    for key in ["passwords.argon2_memory_kib", "passwords.argon2_iterations"] {
        assert!(low.stderr.contains(key), "{key} not named: {low:?}");
    }
    let min = check("[passwords]\nargon2_memory_kib = 19456\nargon2_iterations = 2\n").await;
    assert!(min.ok(), "{min:?}");
}

/// README, `portcullis user add`: "the password comes from stdin or an
/// interactive prompt, never an argument". A `--password` argument is
/// refused (exit code not 0) and no account is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_add_never_takes_the_password_as_an_argument() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = bin::write_config(dir.path(), "http://127.0.0.1:9", "");
    let path = cfg.path.to_str().unwrap().to_string();
    let secret = "an argument passphrase 77";
    let mut cmd = bin::command(&[
        "user",
        "add",
        "--config",
        &path,
        "--email",
        "argv@example.com",
        "--password",
        secret,
    ]);
    cmd.current_dir(dir.path());
    let out = bin::run_async(cmd, None, bin::CLI_LIMIT).await;
    assert!(!out.ok(), "a password argument was accepted: {out:?}");
    let list = bin::run_async(
        bin::command(&["user", "list", "--config", &path]),
        None,
        bin::CLI_LIMIT,
    )
    .await;
    assert!(list.ok(), "{list:?}");
    assert!(!list.stdout.contains("argv@example.com"), "{list:?}");
    // The control: the same account from stdin is made.
    let mut cmd = bin::command(&[
        "user",
        "add",
        "--config",
        &path,
        "--email",
        "argv@example.com",
        "--password-stdin",
    ]);
    cmd.current_dir(dir.path());
    let out = bin::run_async(cmd, Some(format!("{secret}\n")), bin::CLI_LIMIT).await;
    assert!(out.ok(), "{out:?}");
    let list = bin::run_async(
        bin::command(&["user", "list", "--config", &path]),
        None,
        bin::CLI_LIMIT,
    )
    .await;
    assert!(list.stdout.contains("argv@example.com"), "{list:?}");
}

/// README, `log.level`: "a `tracing` filter (`RUST_LOG` overrides)". The
/// real binary with `level = "error"` writes no INFO line; the same file
/// with `RUST_LOG=info` writes its "portcullis is running" INFO line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_is_a_filter_and_rust_log_overrides_it() {
    let up = upstream::start().await;
    for rust_log in [None, Some("info")] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = bin::write_config(dir.path(), &up.url(), "[log]\nlevel = \"error\"\n");
        let mut cmd = bin::command(&["serve", "--config"]);
        cmd.arg(&cfg.path).env("NO_COLOR", "1");
        if let Some(v) = rust_log {
            cmd.env("RUST_LOG", v);
        }
        let served = Served::spawn(cmd, dir.path().join("stderr"), cfg.admin).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        match rust_log {
            Some(_) => loop {
                let log = served.stderr();
                if log.contains("INFO") && log.contains("portcullis is running") {
                    break;
                }
                assert!(Instant::now() < deadline, "RUST_LOG=info ignored:\n{log}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            },
            None => {
                // Served, and given time to log its start-up line.
                assert_error(
                    &http::get(cfg.listen, "/x", None).await,
                    401,
                    "unauthorized",
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
                let log = served.stderr();
                assert!(!log.contains("INFO"), "level = \"error\" ignored:\n{log}");
            }
        }
    }
}

/// README "Metrics": "from the gateway's own registry (several gateways in
/// one process never mix their numbers)". Two gateways in this process: a
/// registration and a proxied request on one move its counters only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_in_one_process_keep_their_own_metrics() {
    let a = TestGateway::start().await;
    let b = TestGateway::start().await;
    let register = "portcullis_auth_events_total{event=\"register\",outcome=\"success\"}";
    let missing = "portcullis_token_checks_total{result=\"missing\"}";
    a.signup("own-metrics@example.com").await;
    assert_eq!(a.get("/x", None).await.status, 401);
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    assert_eq!(metric(&ma, register), 1.0, "{ma}");
    assert_eq!(metric(&ma, missing), 1.0, "{ma}");
    assert_eq!(metric(&mb, register), 0.0, "{mb}");
    assert_eq!(metric(&mb, missing), 0.0, "{mb}");
}

/// README "Retention": the maintenance sweep "counts them in
/// `portcullis_swept_total{kind}`". An expired session, the revocation of a
/// logged-out token that has expired anyway, and expired verification
/// links are each counted under their kind after one sweep, and nothing
/// before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_counts_what_it_removes_by_kind() {
    let gw = TestGateway::start_with(Builder {
        extra: "[throttle]\nauth_per_minute = 0\n[tokens]\naccess_ttl_secs = 60\nrefresh_ttl_secs = 3600\n[accounts]\nverify_token_ttl_secs = 600\n".into(),
        ..Default::default()
    })
    .await;
    let kind = |k: &str| format!("portcullis_swept_total{{kind=\"{k}\"}}");
    // Registration mails a verification link (a one-time token) each.
    let kept = gw.signup("kept@example.com").await;
    let gone = gw.signup("gone@example.com").await;
    // A logout revokes the access token until its exp.
    let r = gw
        .post(
            "/auth/logout",
            serde_json::json!({ "refresh_token": gone.refresh }),
            Some(&gone.access),
        )
        .await;
    assert_eq!(r.status, 204);
    let before = gw.metrics().await;
    for k in ["session", "one_time_token", "revocation"] {
        assert_eq!(metric(&before, &kind(k)), 0.0, "{k} before: {before}");
    }
    // Past the session's lifetime, the links' and the revoked token's exp.
    gw.clock.advance(3700);
    gw.sweep().await;
    let after = gw.metrics().await;
    assert!(metric(&after, &kind("session")) >= 1.0, "{after}");
    assert_eq!(metric(&after, &kind("one_time_token")), 2.0, "{after}");
    assert!(metric(&after, &kind("revocation")) >= 1.0, "{after}");
    // The swept session is gone for good.
    let r = gw
        .post(
            "/auth/refresh",
            serde_json::json!({ "refresh_token": kept.refresh }),
            None,
        )
        .await;
    assert_error(&r, 401, "invalid_token");
}

/// README "Lockout": "A correct login gives back only its own reservation;
/// earlier failures stay counted for their window." With
/// `max_failed_logins = 3`: two failures, a success, then one more failure
/// locks the account (the right password then gets 429); a success that
/// cleared the count would leave it open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_login_does_not_clear_earlier_failures() {
    let gw = TestGateway::start_with(Builder {
        extra: "[throttle]\nauth_per_minute = 0\nmax_failed_logins = 3\nlockout_secs = 300\n"
            .into(),
        ..Default::default()
    })
    .await;
    assert_eq!(gw.register("count@example.com", PASSWORD).await.status, 201);
    let wrong = "not the password 1";
    for _ in 0..2 {
        assert_error(
            &gw.login("count@example.com", wrong).await,
            401,
            "invalid_credentials",
        );
    }
    gw.signin("count@example.com", PASSWORD).await;
    assert_error(
        &gw.login("count@example.com", wrong).await,
        401,
        "invalid_credentials",
    );
    assert_error(
        &gw.login("count@example.com", PASSWORD).await,
        429,
        "too_many_requests",
    );
}

/// README "Set-up" and "Walkthrough with curl", step by step, against the
/// real binary started as `cargo run --release` starts it (no flag, the
/// shipped `gateway.toml` in the working directory; only its four ports are
/// moved to free ones): the shipped file is valid as it is; a protected
/// route without a token is a JSON 401; the README's register and login
/// bodies work; the echo upstream shows the injected X-User-Id,
/// X-User-Email, X-User-Roles and X-Request-Id and not the spoofed
/// X-User-Id; the same over TLS verifying the generated dev certificate for
/// `localhost`; `/auth/me`; and `portcullis_auth_events_total` on the admin
/// listener's `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_works_on_the_shipped_config() {
    use serde_json::json;
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml");
    let dir = tempfile::tempdir().unwrap();

    // The shipped file as it is.
    let mut cmd = bin::command(&["check-config", "--config"]);
    cmd.arg(&shipped).current_dir(dir.path());
    let out = bin::run_async(cmd, None, bin::CLI_LIMIT).await;
    assert!(out.ok(), "the shipped gateway.toml: {out:?}");

    let ports = [free_port(), free_port(), free_port(), free_port()];
    let text = std::fs::read_to_string(&shipped).unwrap();
    let mut moved = text.clone();
    for (from, to) in [
        ("127.0.0.1:8080", format!("127.0.0.1:{}", ports[0])),
        ("0.0.0.0:8443", format!("127.0.0.1:{}", ports[1])),
        ("127.0.0.1:9100", format!("127.0.0.1:{}", ports[2])),
        ("127.0.0.1:8081", format!("127.0.0.1:{}", ports[3])),
    ] {
        assert!(moved.contains(from), "the shipped file has no {from}");
        moved = moved.replace(from, &to);
    }
    std::fs::write(dir.path().join("gateway.toml"), moved).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let tls = std::net::SocketAddr::from(([127, 0, 0, 1], ports[1]));
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], ports[2]));
    let mut cmd = bin::command(&["serve"]);
    cmd.current_dir(dir.path());
    let served = Served::spawn(cmd, dir.path().join("stderr"), admin).await;

    // 1. A protected route without a token: 401 with a JSON error.
    assert_error(&http::get(addr, "/hello", None).await, 401, "unauthorized");

    // 2. The README's bodies, verbatim.
    let r = http::post_json(
        addr,
        "/auth/register",
        &json!({"email":"alice@example.com","password":"correct horse battery","password_confirm":"correct horse battery"}),
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = http::post_json(
        addr,
        "/auth/login",
        &json!({"email":"alice@example.com","password":"correct horse battery"}),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let token = r.json()["access_token"].as_str().unwrap().to_string();
    let id = r.json()["user"]["id"].as_str().unwrap().to_string();
    let auth = format!("Bearer {token}");

    // 3. The echo upstream shows the injected identity, not the spoof.
    let r = http::request(
        addr,
        "GET",
        "/hello",
        &[("Authorization", &auth), ("X-User-Id", "spoofed")],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let echo = r.text().to_ascii_lowercase();
    for line in [
        format!("x-user-id: {id}"),
        "x-user-email: alice@example.com".to_string(),
        "x-user-roles:".to_string(),
        "x-request-id: ".to_string(),
    ] {
        assert!(echo.contains(&line), "{line} not echoed: {echo}");
    }
    assert!(!echo.contains("spoofed"), "{echo}");

    // 4. Over TLS, verifying the generated dev certificate.
    let raw = http::build_request(
        "localhost",
        "GET",
        "/hello",
        &[("Authorization", &auth)],
        None,
        false,
    );
    let cert = dir.path().join("certs/dev-cert.pem");
    let (r, _) = http::tls_send_raw(tls, "localhost", &cert, &raw, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.text()
            .to_ascii_lowercase()
            .contains(&format!("x-user-id: {id}")),
        "{r:?}"
    );

    // 5. Who am I, and the metrics on the admin listener.
    let r = http::get(addr, "/auth/me", Some(&token)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["user"]["email"], "alice@example.com");
    let m = http::get(admin, "/metrics", None).await.text();
    assert_eq!(
        metric(
            &m,
            "portcullis_auth_events_total{event=\"login\",outcome=\"success\"}"
        ),
        1.0,
        "{m}"
    );
    drop(served);
}

/// README, `tokens.issuer`, `tokens.audience`: "`iss` and `aud`". A gateway
/// set to issuer "acme" and audience "acme-api" issues tokens with those
/// claims; another gateway with the same settings and key accepts them (the
/// control), one with the defaults and the same key refuses them, and the
/// first refuses the default gateway's tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_and_audience_are_the_configured_ones() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let env = std::collections::HashMap::from([(
        "PORTCULLIS_JWT_SECRET".to_string(),
        "claims-test-secret-0123456789-abcdefghij".to_string(),
    )]);
    let acme = "[tokens]\nissuer = \"acme\"\naudience = \"acme-api\"\n";
    let start = |extra: &str| {
        TestGateway::start_with(Builder {
            env: env.clone(),
            extra: extra.into(),
            ..Default::default()
        })
    };
    let (a, a2, plain) = (start(acme).await, start(acme).await, start("").await);
    let s = a.signup("iss@example.com").await;
    let payload = s.access.split('.').nth(1).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["iss"], "acme", "{claims}");
    assert!(
        claims["aud"] == "acme-api" || claims["aud"] == serde_json::json!(["acme-api"]),
        "{claims}"
    );
    assert_eq!(a.get("/x", Some(&s.access)).await.status, 200);
    assert_eq!(a2.get("/x", Some(&s.access)).await.status, 200, "control");
    assert_error(&plain.get("/x", Some(&s.access)).await, 401, "unauthorized");
    let p = plain.signup("plain@example.com").await;
    assert_eq!(plain.get("/x", Some(&p.access)).await.status, 200);
    assert_error(&a.get("/x", Some(&p.access)).await, 401, "unauthorized");
}

/// README, `throttle.max_failed_logins`: "`0` = off". Twenty wrong
/// passwords in a row, then the right one logs in (with the default 5 it
/// would be 429).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_failed_logins_zero_means_no_lockout() {
    let gw = TestGateway::start_with(Builder {
        extra: "[throttle]\nauth_per_minute = 0\nmax_failed_logins = 0\n".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(
        gw.register("nolock@example.com", PASSWORD).await.status,
        201
    );
    for i in 0..20 {
        let r = gw.login("nolock@example.com", "not the password 1").await;
        assert_eq!(r.status, 401, "guess {i}: {r:?}");
    }
    gw.signin("nolock@example.com", PASSWORD).await;
}

/// README, `[[routes]] upstream`: "`http(s)://host:port`". An `https://`
/// upstream is spoken to in TLS: the first bytes the gateway sends it are a
/// TLS handshake record, not an HTTP request line. (This listener then
/// hangs up, so the client gets 502 `bad_gateway`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_spoken_to_in_tls() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let gw = TestGateway::start_with(Builder {
        routes: format!(
            "[[routes]]\nprefix = \"/\"\nupstream = \"https://127.0.0.1:{port}\"\nauth = \"public\"\n"
        ),
        ..Default::default()
    })
    .await;
    let first = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut b = [0u8; 3];
        conn.read_exact(&mut b).await.unwrap();
        b
    });
    let r = gw.get("/tls-up", None).await;
    assert_error(&r, 502, "bad_gateway");
    let b = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("the gateway connected to the upstream")
        .unwrap();
    // A handshake record of TLS 1.x (0x16 0x03 0x0?).
    assert_eq!((b[0], b[1]), (0x16, 0x03), "not TLS: {b:?}");
}

/// README, `PORTCULLIS_REFRESH_SECRET`: "the refresh-token key, at least 32
/// bytes; … else each uses its own `data_dir/refresh.key`"; and "Refresh
/// tokens": "A forged token is refused before its session is touched". The
/// real binary on one data dir: a refresh token issued under key K1 is
/// refused after a restart under K2 (with `refresh.key` it would still
/// work), and works again after a restart under K1 (the refused attempt did
/// not end its session). A key shorter than 32 bytes is a config error
/// naming the variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_key_comes_from_the_environment() {
    use serde_json::json;
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = bin::write_config(dir.path(), &up.url(), "");
    let k1 = "refresh key one, thirty-two bytes or more";
    let k2 = "refresh key two, thirty-two bytes or more";
    let serve = |key: &'static str| {
        let mut cmd = bin::command(&["serve", "--config"]);
        cmd.arg(&cfg.path).env("PORTCULLIS_REFRESH_SECRET", key);
        Served::spawn(cmd, dir.path().join("stderr"), cfg.admin)
    };
    let refresh = |token: String| {
        let addr = cfg.listen;
        async move {
            http::post_json(
                addr,
                "/auth/refresh",
                &json!({ "refresh_token": token }),
                None,
            )
            .await
        }
    };

    let mut s = serve(k1).await;
    let body =
        json!({ "email": "rk@example.com", "password": PASSWORD, "password_confirm": PASSWORD });
    assert_eq!(
        http::post_json(cfg.listen, "/auth/register", &body, None)
            .await
            .status,
        201
    );
    let body = json!({ "email": "rk@example.com", "password": PASSWORD });
    let r = http::post_json(cfg.listen, "/auth/login", &body, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let token = r.json()["refresh_token"].as_str().unwrap().to_string();
    s.crash();

    let mut s = serve(k2).await;
    assert_error(&refresh(token.clone()).await, 401, "invalid_token");
    s.crash();

    let _s = serve(k1).await;
    let r = refresh(token).await;
    assert_eq!(r.status, 200, "the session was touched: {r:?}");

    let mut cmd = bin::command(&["check-config", "--config"]);
    cmd.arg(&cfg.path).env(
        "PORTCULLIS_REFRESH_SECRET",
        "thirty-one bytes, one too few!!",
    );
    let out = bin::run_async(cmd, None, bin::CLI_LIMIT).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("PORTCULLIS_REFRESH_SECRET"), "{out:?}");
}

/// README, `server.listen` and `server.tls_listen`: "`""` disables". The
/// real binary with one of them empty runs the other public service only
/// (Pingora lists the services it starts: "portcullis http" is the plain
/// listener, "portcullis https" the TLS one), and the other address
/// accepts connections. Both empty is refused, naming the key (a gateway
/// with nothing to serve).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_listen_addresses_disable_the_public_listeners() {
    for plain_off in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let port = free_port();
        let admin = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (listen, tls) = if plain_off {
            (String::new(), format!("127.0.0.1:{port}"))
        } else {
            (format!("127.0.0.1:{port}"), String::new())
        };
        let path = dir.path().join("gateway.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = \"{listen}\"\ntls_listen = \"{tls}\"\nadmin_listen = \"{admin}\"\ndata_dir = \"{d}/data\"\ntls_cert = \"{d}/cert.pem\"\ntls_key = \"{d}/key.pem\"\n"
            ),
        )
        .unwrap();
        let mut cmd = bin::command(&["serve", "--config"]);
        cmd.arg(&path).env("NO_COLOR", "1");
        let served = Served::spawn(cmd, dir.path().join("stderr"), admin).await;
        let log = served.stderr();
        let started = log
            .lines()
            .find(|l| l.contains("Starting services in dependency order"))
            .unwrap_or_else(|| panic!("no service list:\n{log}"));
        let (on, off) = if plain_off {
            ("\"portcullis https\"", "\"portcullis http\"")
        } else {
            ("\"portcullis http\"", "\"portcullis https\"")
        };
        assert!(started.contains(on), "{on} not started: {started}");
        assert!(!started.contains(off), "{off} started: {started}");
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "{on} does not accept on {addr}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Both empty: nothing to serve, refused by name.
    let dir = tempfile::tempdir().unwrap();
    let cfg = bin::write_config(dir.path(), "http://127.0.0.1:9", "");
    let text = std::fs::read_to_string(&cfg.path)
        .unwrap()
        .replace(&format!("listen = \"{}\"", cfg.listen), "listen = \"\"");
    std::fs::write(&cfg.path, text).unwrap();
    let mut cmd = bin::command(&["check-config", "--config"]);
    cmd.arg(&cfg.path);
    let out = bin::run_async(cmd, None, bin::CLI_LIMIT).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("server.listen"), "{out:?}");
}
