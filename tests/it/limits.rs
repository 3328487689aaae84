//! Abuse protection and observability (issue 5): per-IP throttle, client IP
//! from trusted proxies, per-account lockout, body/header limits, slowloris
//! deadlines, Prometheus metrics, and secret-free logs and audit.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::http::{self, post_with, Response};
use crate::common::*;

const THROTTLE_3: &str = "[throttle]\nauth_per_minute = 3\n";
const TRUST_LOOPBACK: &str = "trusted_proxies = [\"127.0.0.1/32\"]";

/// A cheap throttled request: introspection of a junk token (no hashing).
async fn cheap_post(gw: &TestGateway, headers: &[(&str, &str)]) -> Response {
    post_with(
        gw.addr,
        "/auth/verify",
        &json!({ "token": "junk" }),
        headers,
    )
    .await
}

fn assert_429(r: &Response, what: &str) -> u64 {
    assert_eq!(r.status, 429, "{what}: {}", r.text());
    assert_eq!(r.json()["error"], "too_many_requests", "{what}");
    r.header("retry-after")
        .unwrap_or_else(|| panic!("{what}: no Retry-After"))
        .parse()
        .unwrap_or_else(|_| panic!("{what}: Retry-After is not delta-seconds"))
}

fn throttled(text: &str, scope: &str) -> f64 {
    metric(
        text,
        &format!("portcullis_throttled_total{{scope=\"{scope}\"}}"),
    )
}

// ---------------------------------------------------------------------------
// Per-IP throttle
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_throttle_covers_every_auth_post_with_a_correct_retry_after() {
    let gw = TestGateway::start_with(Builder {
        extra: THROTTLE_3.into(),
        ..Default::default()
    })
    .await;
    let before = throttled(&gw.metrics().await, "ip");

    // Three different POST endpoints share one per-IP budget.
    let r = gw.login("nobody@example.com", "wrong password here").await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = gw
        .post("/auth/refresh", json!({ "refresh_token": "nope" }), None)
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = cheap_post(&gw, &[]).await;
    assert_eq!(r.status, 401, "{}", r.text());

    // The 4th POST in the window, on yet another endpoint, is refused.
    let r = gw.register("new@example.com", PASSWORD).await;
    assert_eq!(assert_429(&r, "4th POST"), 60);
    let r = gw
        .post(
            "/auth/password/reset",
            json!({ "email": "a@example.com" }),
            None,
        )
        .await;
    assert_eq!(assert_429(&r, "5th POST"), 60);

    // GETs are not throttled.
    let r = gw.get("/auth/me", None).await;
    assert_eq!(r.status, 401, "GET /auth/me: {}", r.text());
    let r = gw.get("/.well-known/jwks.json", None).await;
    assert_eq!(r.status, 200);
    let r = gw.get("/auth/verify", None).await;
    assert_eq!(r.status, 401);

    // Retry-After counts down with the clock.
    gw.clock.advance(20);
    assert_eq!(assert_429(&cheap_post(&gw, &[]).await, "after 20 s"), 40);
    gw.clock.advance(39);
    assert_eq!(assert_429(&cheap_post(&gw, &[]).await, "after 59 s"), 1);

    // A full window later the budget is back.
    gw.clock.advance(1);
    for i in 0..3 {
        let r = cheap_post(&gw, &[]).await;
        assert_eq!(r.status, 401, "request {i} of the new window: {}", r.text());
    }
    assert_429(&cheap_post(&gw, &[]).await, "4th in the new window");

    let after = throttled(&gw.metrics().await, "ip");
    assert_eq!(after - before, 5.0, "throttled{{ip}} {before} -> {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_throttle_zero_means_off() {
    let gw = TestGateway::start_with(Builder {
        extra: "[throttle]\nauth_per_minute = 0\n".into(),
        ..Default::default()
    })
    .await;
    for i in 0..40 {
        let r = cheap_post(&gw, &[]).await;
        assert_eq!(r.status, 401, "request {i}: {}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_state_survives_a_restart() {
    let mut gw = TestGateway::start_with(Builder {
        extra: THROTTLE_3.into(),
        ..Default::default()
    })
    .await;
    let store = gw.handle().auth.store.clone();
    let writes_before = store.stats().ops;
    for _ in 0..3 {
        assert_eq!(cheap_post(&gw, &[]).await.status, 401);
    }
    assert_429(&cheap_post(&gw, &[]).await, "exhausted");

    // sled counts in memory; the maintenance task writes the counters out
    // (a store write: nothing else here writes) within about 1 s, without
    // waiting for a shutdown.
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.stats().ops == writes_before {
        assert!(
            Instant::now() < deadline,
            "throttle counters were not written out in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(store);

    gw.clock.advance(10);
    gw.restart();
    let retry = assert_429(&cheap_post(&gw, &[]).await, "after restart");
    assert_eq!(retry, 50, "the window keeps its start across the restart");
    gw.clock.advance(50);
    assert_eq!(cheap_post(&gw, &[]).await.status, 401);
}

// ---------------------------------------------------------------------------
// Client IP
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_from_an_untrusted_peer_are_ignored() {
    let gw = TestGateway::start_with(Builder {
        extra: THROTTLE_3.into(),
        ..Default::default()
    })
    .await;
    let spoofs: [(&str, &str); 6] = [
        ("X-Forwarded-For", "198.51.100.1"),
        ("X-Forwarded-For", "198.51.100.2"),
        ("Forwarded", "for=198.51.100.3"),
        ("X-Forwarded-For", "198.51.100.4"),
        ("X-Real-IP", "198.51.100.5"),
        ("Forwarded", "for=\"[2001:db8::5]\""),
    ];
    for (i, h) in spoofs.iter().enumerate() {
        let r = cheap_post(&gw, &[*h]).await;
        if i < 3 {
            assert_eq!(r.status, 401, "{h:?}: {}", r.text());
        } else {
            assert_429(&r, &format!("rotating {h:?}"));
        }
    }
    let long = vec!["203.0.113.9"; 1000].join(", ");
    assert_429(
        &cheap_post(&gw, &[("X-Forwarded-For", &long)]).await,
        "1000-hop XFF",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxy_gives_each_client_its_own_bucket() {
    let gw = TestGateway::start_with(Builder {
        extra: "[throttle]\nauth_per_minute = 2\n".into(),
        server_extra: TRUST_LOOPBACK.into(),
        ..Default::default()
    })
    .await;
    let a = [("X-Forwarded-For", "203.0.113.1")];
    let b = [("X-Forwarded-For", "203.0.113.2")];
    assert_eq!(cheap_post(&gw, &a).await.status, 401);
    assert_eq!(cheap_post(&gw, &a).await.status, 401);
    assert_429(&cheap_post(&gw, &a).await, "client A exhausted");
    // Another client behind the same proxy is unaffected.
    assert_eq!(cheap_post(&gw, &b).await.status, 401);
    // The rightmost untrusted hop counts: a client cannot prepend its way out.
    assert_429(
        &cheap_post(&gw, &[("X-Forwarded-For", "198.51.100.77, 203.0.113.1")]).await,
        "prepended hop",
    );
    // Trusted hops to the right are skipped.
    assert_429(
        &cheap_post(&gw, &[("X-Forwarded-For", "203.0.113.1, 127.0.0.1")]).await,
        "trusted hop on the right",
    );
    // Only the configured header (X-Forwarded-For by default) is read: a
    // Forwarded header names nobody, so this counts against the proxy itself
    // (`server.client_ip_header = "forwarded"` is tested in security/).
    assert_eq!(
        cheap_post(&gw, &[("Forwarded", "for=203.0.113.1;proto=https")])
            .await
            .status,
        401
    );

    // A 1000-hop chain whose rightmost hop is the real (exhausted) client.
    let mut hops = vec!["1.2.3.4"; 999];
    hops.push("203.0.113.1");
    assert_429(
        &cheap_post(&gw, &[("X-Forwarded-For", &hops.join(", "))]).await,
        "1000-hop XFF ending in A",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_forwarding_headers_never_bypass_the_throttle_nor_fail() {
    let gw = TestGateway::start_with(Builder {
        extra: "[throttle]\nauth_per_minute = 2\n".into(),
        server_extra: TRUST_LOOPBACK.into(),
        ..Default::default()
    })
    .await;
    // Exhaust the proxy's own bucket (no forwarding header at all).
    assert_eq!(cheap_post(&gw, &[]).await.status, 401);
    assert_eq!(cheap_post(&gw, &[]).await.status, 401);
    assert_429(&cheap_post(&gw, &[]).await, "peer exhausted");

    let thousand_trusted = vec!["127.0.0.1"; 1000].join(",");
    let thousand_garbage = vec!["x"; 1000].join(",");
    let huge = "9".repeat(8000);
    let garbage: Vec<(&str, String)> = vec![
        ("X-Forwarded-For", "garbage".into()),
        ("X-Forwarded-For", "".into()),
        ("X-Forwarded-For", ",,,,".into()),
        ("X-Forwarded-For", "1.2.3.4.5".into()),
        ("X-Forwarded-For", "999.1.1.1".into()),
        ("X-Forwarded-For", "[::1".into()),
        ("X-Forwarded-For", "203.0.113.50, garbage".into()),
        ("X-Forwarded-For", "unknown".into()),
        ("X-Forwarded-For", huge.clone()),
        ("X-Forwarded-For", thousand_trusted),
        ("X-Forwarded-For", thousand_garbage),
        ("Forwarded", "for=unknown".into()),
        ("Forwarded", "for=_hidden, for=\"_obf\"".into()),
        ("Forwarded", "for=\"[garbage]:1\"".into()),
        ("Forwarded", ";;;==;".into()),
        ("Forwarded", format!("for={huge}")),
    ];
    for (name, value) in &garbage {
        let r = cheap_post(&gw, &[(name, value)]).await;
        let shown: String = value.chars().take(40).collect();
        assert_429(&r, &format!("{name}: {shown}"));
    }
    // Non-UTF-8 bytes in the header.
    let mut raw = b"POST /auth/verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 15\r\nConnection: close\r\nX-Forwarded-For: \xff\xfe1.2.3.4\r\n\r\n".to_vec();
    raw.extend_from_slice(br#"{"token":"abc"}"#);
    let r = http::send_raw(gw.addr, &raw).await.unwrap();
    // Unreadable, so like any other garbage: the proxy's own (spent) budget.
    assert_429(&r, "non-UTF-8 XFF");
}

// ---------------------------------------------------------------------------
// Per-account lockout
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_lockout_counts_across_ips_and_spares_known_devices() {
    let gw = TestGateway::start_with(Builder {
        extra: "[throttle]\nauth_per_minute = 100\nmax_failed_logins = 3\nlockout_secs = 300\n"
            .into(),
        server_extra: TRUST_LOOPBACK.into(),
        ..Default::default()
    })
    .await;
    let email = "victim@example.com";
    let device = gw.signup(email).await; // a live session: the "device"
    let other = gw.signup("other@example.com").await;
    let before = throttled(&gw.metrics().await, "account");

    let login = |xff: &'static str, pw: &'static str, extra: Option<&str>| {
        let mut body = json!({ "email": email, "password": pw });
        if let Some(t) = extra {
            body["refresh_token"] = json!(t);
        }
        let addr = gw.addr;
        async move { post_with(addr, "/auth/login", &body, &[("X-Forwarded-For", xff)]).await }
    };

    // Three failures, each from a different client IP.
    for xff in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
        let r = login(xff, "wrong password 123", None).await;
        assert_eq!(r.status, 401, "{xff}: {}", r.text());
    }
    // Locked: even the right password, from a fresh IP, gets a 429.
    let locked = login("203.0.113.4", PASSWORD, None).await;
    let retry = assert_429(&locked, "right password while locked");
    assert!((1..=300).contains(&retry), "Retry-After {retry}");
    let wrong = login("203.0.113.5", "wrong password 123", None).await;
    assert_429(&wrong, "wrong password while locked");
    assert_eq!(locked.body, wrong.body, "the same generic 429");

    // The body is the same generic 429 as the per-IP throttle's.
    let mut ip_429 = None;
    for _ in 0..101 {
        let r = cheap_post(&gw, &[("X-Forwarded-For", "198.51.100.200")]).await;
        if r.status == 429 {
            ip_429 = Some(r);
            break;
        }
    }
    let ip_429 = ip_429.expect("the per-IP throttle answers 429");
    assert_eq!(locked.body, ip_429.body, "lockout and IP throttle bodies");

    // A device exemption: the user's own live refresh token lets them in.
    let r = login("203.0.113.6", PASSWORD, Some(device.refresh.as_str())).await;
    assert_eq!(r.status, 200, "device-exempt login: {}", r.text());
    assert!(r.json()["access_token"].is_string());
    // ...but not with a wrong password,
    let r = login(
        "203.0.113.6",
        "wrong password 123",
        Some(device.refresh.as_str()),
    )
    .await;
    assert_eq!(r.status, 401, "device + wrong password: {}", r.text());
    // ...nor with somebody else's or a made-up token,
    assert_429(
        &login("203.0.113.6", PASSWORD, Some(other.refresh.as_str())).await,
        "another user's refresh token",
    );
    assert_429(
        &login("203.0.113.6", PASSWORD, Some("made-up-token")).await,
        "a junk refresh token",
    );
    // ...and the exempt login did not unlock the account for everyone else.
    assert_429(&login("203.0.113.7", PASSWORD, None).await, "still locked");

    // The failure that locked the account, then five refusals.
    let after = throttled(&gw.metrics().await, "account");
    assert_eq!(
        after - before,
        6.0,
        "throttled{{account}} {before} -> {after}"
    );

    // The lock ends after lockout_secs.
    gw.clock.advance(299);
    assert_429(&login("203.0.113.8", PASSWORD, None).await, "at 299 s");
    gw.clock.advance(1);
    let r = login("203.0.113.8", PASSWORD, None).await;
    assert_eq!(r.status, 200, "after the lockout: {}", r.text());
}

// ---------------------------------------------------------------------------
// Body and header limits
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_body_above_the_limit_gets_413() {
    let gw = TestGateway::start_with(Builder {
        extra: "[limits]\nmax_body_bytes = 2048\n".into(),
        ..Default::default()
    })
    .await;
    let big = json!({ "email": "a@example.com", "password": "x".repeat(3000) });
    let r = gw.post("/auth/login", big.clone(), None).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"], "payload_too_large");

    // Without a Content-Length (chunked), the limit still holds.
    let body = big.to_string();
    let mut raw = b"POST /auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for chunk in body.as_bytes().chunks(500) {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let r = http::send_raw(gw.addr, &raw).await.unwrap();
    assert_eq!(r.status, 413, "chunked: {}", r.text());
    assert_eq!(r.json()["error"], "payload_too_large");

    // Just under the limit is read normally.
    let ok = json!({ "email": "a@example.com", "password": "x".repeat(1500) });
    let r = gw.post("/auth/login", ok, None).await;
    assert_eq!(r.status, 401, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_or_too_large_headers_get_431_locally_and_on_proxied_routes() {
    let gw = TestGateway::start_with(Builder {
        extra: "[limits]\nmax_header_count = 20\nmax_header_bytes = 4096\n".into(),
        ..Default::default()
    })
    .await;
    let many: Vec<(String, String)> = (0..30)
        .map(|i| (format!("X-Pad-{i}"), "v".into()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let large = "a".repeat(5000);
    let large = [("X-Large", large.as_str())];
    for path in ["/auth/me", "/public/page", "/protected"] {
        let r = http::request(gw.addr, "GET", path, &many, None)
            .await
            .unwrap();
        assert_eq!(r.status, 431, "{path} with 30 headers: {}", r.text());
        assert_eq!(r.json()["error"], "request_header_fields_too_large");
        let r = http::request(gw.addr, "GET", path, &large, None)
            .await
            .unwrap();
        assert_eq!(
            r.status,
            431,
            "{path} with a 5000-byte header: {}",
            r.text()
        );
    }
    // POSTs too (the limit runs before the body is read).
    let r = http::request(gw.addr, "POST", "/auth/login", &many, Some(b"{}"))
        .await
        .unwrap();
    assert_eq!(r.status, 431);
    assert_eq!(gw.upstream.hits(), 0, "nothing reached the upstream");

    // Within the limits, the same routes work.
    let few = [("X-Pad", "v")];
    let r = http::request(gw.addr, "GET", "/public/page", &few, None)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.upstream.hits(), 1);
}

// ---------------------------------------------------------------------------
// Slowloris
// ---------------------------------------------------------------------------

/// Seconds until the server closes `stream` (EOF or error), at most `max`.
async fn closed_after(stream: &mut TcpStream, max: Duration) -> Option<(Duration, Vec<u8>)> {
    let start = Instant::now();
    let got = http::read_until_closed(stream, max).await?;
    Some((start.elapsed(), got))
}

/// Writes `bytes` one at a time every `every`, until done or the peer
/// closes; returns how many were written.
fn trickle(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    bytes: Vec<u8>,
    every: Duration,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        for (i, b) in bytes.iter().enumerate() {
            if w.write_all(&[*b]).await.is_err() {
                return i;
            }
            tokio::time::sleep(every).await;
        }
        bytes.len()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_are_cut_while_normal_requests_are_served() {
    let gw = TestGateway::start_with(Builder {
        extra: "[limits]\ndownstream_read_timeout_secs = 2\n".into(),
        ..Default::default()
    })
    .await;
    let started = Instant::now();

    // A: a partial request line, then silence.
    let mut a = TcpStream::connect(gw.addr).await.unwrap();
    a.write_all(b"GET /public/a HTT").await.unwrap();

    // B: a header trickled one byte every 300 ms (each read is quick, so
    // only a whole-header deadline catches it).
    let b = TcpStream::connect(gw.addr).await.unwrap();
    let (mut b_read, b_write) = b.into_split();
    let slow = b"GET /public/b HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n".to_vec();
    let writer = trickle(b_write, slow, Duration::from_millis(300));

    // Normal requests are served meanwhile.
    for i in 0..5 {
        let r = gw.get(&format!("/public/normal-{i}"), None).await;
        assert_eq!(r.status, 200, "normal request {i}: {}", r.text());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let (t_a, _) = closed_after(
        &mut a,
        Duration::from_secs(4).saturating_sub(started.elapsed()),
    )
    .await
    .expect("the silent partial request is closed within timeout + 2 s");
    let total_a = started.elapsed();
    assert!(
        total_a <= Duration::from_secs(4),
        "A closed after {total_a:?} ({t_a:?})"
    );

    let b_closed = http::read_until_closed(
        &mut b_read,
        Duration::from_secs(4).saturating_sub(started.elapsed()) + Duration::from_millis(500),
    )
    .await;
    assert!(
        b_closed.is_some(),
        "the trickling header was not cut within ~4 s"
    );
    let written = writer.await.unwrap();
    assert!(written < 80, "the slow client got to send {written} bytes");
    let total_b = started.elapsed();
    assert!(
        total_b >= Duration::from_millis(1500),
        "cut too early: {total_b:?}"
    );

    // Nothing of A or B reached the upstream; the normal requests did.
    let paths: Vec<String> = gw
        .upstream
        .requests()
        .iter()
        .map(|r| r["path"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        !paths.iter().any(|p| p == "/public/a" || p == "/public/b"),
        "{paths:?}"
    );
    assert_eq!(paths.len(), 5, "{paths:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_connections_get_the_header_deadline_per_request() {
    let gw = TestGateway::start_with(Builder {
        extra: "[limits]\ndownstream_read_timeout_secs = 2\n".into(),
        ..Default::default()
    })
    .await;
    let mut conn = http::Conn::connect(gw.addr).await.unwrap();
    let r = conn.request("GET", "/public/one", &[], None).await.unwrap();
    assert_eq!(r.status, 200);
    // Idle time between requests is keep-alive time, not header time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = conn.request("GET", "/public/two", &[], None).await.unwrap();
    assert_eq!(r.status, 200, "a keep-alive request after 3 s idle");
    // The next request's header, started and never finished, is cut.
    conn.write_partial(b"GET /public/three HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    assert!(
        conn.is_closed_within(Duration::from_secs(4)).await,
        "an unfinished header on a reused connection stays open"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "cut too early: {:?}",
        t.elapsed()
    );
    assert_eq!(gw.upstream.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_login_body_is_cut() {
    let gw = TestGateway::start_with(Builder {
        extra: "[limits]\ndownstream_read_timeout_secs = 2\n".into(),
        ..Default::default()
    })
    .await;
    let body = json!({ "email": "slow@example.com", "password": "a password that arrives slowly" })
        .to_string();
    let head = format!(
        "POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let s = TcpStream::connect(gw.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let writer = trickle(wr, body.into_bytes(), Duration::from_millis(300));

    // A normal login meanwhile is answered.
    let r = gw.login("nobody@example.com", "whatever password").await;
    assert_eq!(r.status, 401);

    let got = http::read_until_closed(&mut rd, Duration::from_secs(5)).await;
    assert!(got.is_some(), "the trickled body was not cut");
    let got = got.unwrap_or_default();
    let elapsed = started.elapsed();
    assert!(
        elapsed <= Duration::from_secs(4) + Duration::from_millis(500),
        "{elapsed:?}"
    );
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "answer to a slow body: {text}"
    );
    assert!(text.contains("request_timeout"), "{text}");
    assert!(writer.await.unwrap() < 60, "the whole body got through");
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

fn auth_ev(text: &str, event: &str, outcome: &str) -> f64 {
    metric(
        text,
        &format!("portcullis_auth_events_total{{event=\"{event}\",outcome=\"{outcome}\"}}"),
    )
}

fn checks(text: &str, result: &str) -> f64 {
    metric(
        text,
        &format!("portcullis_token_checks_total{{result=\"{result}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_the_contract_and_move_with_events() {
    let gw = TestGateway::start_with(Builder {
        extra: "[throttle]\nauth_per_minute = 50\n".into(),
        ..Default::default()
    })
    .await;
    let m0 = gw.metrics().await;
    // Every family and label of CONTRACT section 6 is exported from the start.
    for e in [
        "register",
        "login",
        "refresh",
        "logout",
        "password_reset",
        "email_verify",
    ] {
        for o in ["success", "failure", "throttled"] {
            let line = format!("portcullis_auth_events_total{{event=\"{e}\",outcome=\"{o}\"}} ");
            assert!(m0.contains(&line), "missing {line}");
        }
    }
    for r in ["valid", "missing", "invalid", "expired", "revoked"] {
        let line = format!("portcullis_token_checks_total{{result=\"{r}\"}} ");
        assert!(m0.contains(&line), "missing {line}");
    }
    for s in ["ip", "account"] {
        let line = format!("portcullis_throttled_total{{scope=\"{s}\"}} ");
        assert!(m0.contains(&line), "missing {line}");
    }
    assert!(m0.contains("# TYPE portcullis_auth_events_total counter"));
    assert!(m0.contains("# TYPE portcullis_token_checks_total counter"));
    assert!(m0.contains("# TYPE portcullis_throttled_total counter"));
    assert!(m0.contains("# TYPE portcullis_upstream_duration_seconds histogram"));

    // Auth events.
    let s = gw.signup("metrics@example.com").await; // register + login success
    assert_eq!(
        gw.register("metrics@example.com", PASSWORD).await.status,
        409
    );
    assert_eq!(
        gw.login("metrics@example.com", "not the password")
            .await
            .status,
        401
    );
    let r = gw
        .post("/auth/refresh", json!({ "refresh_token": s.refresh }), None)
        .await;
    assert_eq!(r.status, 200);
    let refreshed = r.json()["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(
        gw.post("/auth/refresh", json!({ "refresh_token": "bogus" }), None)
            .await
            .status,
        401
    );

    // Token checks of every result, through a proxied route.
    let up0 = metric(
        &gw.metrics().await,
        "portcullis_upstream_duration_seconds_count{route=\"/\"}",
    );
    assert_eq!(gw.get("/data", Some(&s.access)).await.status, 200); // valid
    assert_eq!(gw.get("/data", None).await.status, 401); // missing
    assert_eq!(gw.get("/data", Some("not.a.jwt")).await.status, 401); // invalid
    let second = gw.signin("metrics@example.com", PASSWORD).await;
    let r = gw
        .post(
            "/auth/logout",
            json!({ "refresh_token": second.refresh }),
            Some(&second.access),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(gw.get("/data", Some(&second.access)).await.status, 401); // revoked
    gw.clock.advance(900 + 31);
    assert_eq!(gw.get("/data", Some(&s.access)).await.status, 401); // expired

    // Exact deltas: the registry is this gateway's own.
    let m1 = gw.metrics().await;
    for (e, o, n) in [
        ("register", "success", 1.0),
        ("register", "failure", 1.0),
        ("login", "success", 2.0),
        ("login", "failure", 1.0),
        ("login", "throttled", 0.0),
        ("refresh", "success", 1.0),
        ("refresh", "failure", 1.0),
        ("logout", "success", 1.0),
        ("password_reset", "success", 0.0),
        ("email_verify", "success", 0.0),
    ] {
        assert_eq!(
            auth_ev(&m1, e, o) - auth_ev(&m0, e, o),
            n,
            "auth event {e}/{o}"
        );
    }
    // The logout's optional bearer is checked too, after its refresh token
    // has ended the session: revoked.
    for (r, n) in [
        ("valid", 1.0),
        ("missing", 1.0),
        ("invalid", 1.0),
        ("expired", 1.0),
        ("revoked", 2.0),
    ] {
        assert_eq!(checks(&m1, r) - checks(&m0, r), n, "token check {r}");
    }
    let up1 = metric(
        &m1,
        "portcullis_upstream_duration_seconds_count{route=\"/\"}",
    );
    assert_eq!(up1 - up0, 1.0, "only the valid request went upstream");
    assert!(m1.contains("portcullis_upstream_duration_seconds_bucket{route=\"/\",le=\"+Inf\"}"));
    assert!(m1.contains("portcullis_upstream_duration_seconds_sum{route=\"/\"}"));
    let _ = refreshed;

    // Throttled outcomes move both counters, once per refusal.
    let t0 = auth_ev(&m1, "login", "throttled");
    let mut refused = 0.0;
    for _ in 0..60 {
        if cheap_post(&gw, &[]).await.status == 429 {
            refused += 1.0;
            break;
        }
    }
    assert_eq!(refused, 1.0);
    assert_eq!(gw.login("metrics@example.com", PASSWORD).await.status, 429);
    let m2 = gw.metrics().await;
    assert_eq!(auth_ev(&m2, "login", "throttled") - t0, 1.0);
    assert_eq!(throttled(&m2, "ip") - throttled(&m1, "ip"), 2.0);
    assert_eq!(throttled(&m2, "account") - throttled(&m1, "account"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_live_only_on_the_admin_listener() {
    let gw = TestGateway::start().await;
    let r = http::get(gw.admin_addr, "/metrics", None).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    assert!(r.text().contains("portcullis_auth_events_total"));
    for p in ["/healthz", "/readyz"] {
        assert_eq!(http::get(gw.admin_addr, p, None).await.status, 200, "{p}");
    }

    // On the public listener /metrics is an ordinary protected route.
    let r = gw.get("/metrics", None).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(!r.text().contains("portcullis_"));
    let s = gw.signup("scraper@example.com").await;
    let r = gw.get("/metrics", Some(&s.access)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/metrics", "proxied to the upstream app");
    assert!(!r.text().contains("portcullis_auth_events_total"));
    for p in ["/healthz", "/readyz"] {
        let r = gw.get(p, None).await;
        assert_eq!(r.status, 401, "{p} on the public listener: {}", r.text());
    }
    let r = http::tls_get(gw.tls_addr, "localhost", &gw.cert_path(), "/metrics").await;
    let r = r.expect("TLS GET /metrics");
    assert_eq!(r.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_metrics() {
    let gw = TestGateway::start().await;
    // Make every family have samples, histograms included.
    let s = gw.signup("promtool@example.com").await;
    assert_eq!(gw.get("/x", Some(&s.access)).await.status, 200);
    let text = gw.metrics().await;

    let promtool = which("promtool").unwrap_or_else(|| {
        panic!(
            "promtool is not on PATH: install the Debian package `prometheus` \
             (apt-get install -y prometheus); this test needs it to lint /metrics"
        )
    });
    let mut cmd = Command::new(promtool);
    cmd.args(["check", "metrics"]);
    let out = crate::common::bin::run_async(cmd, Some(text), crate::common::bin::CLI_LIMIT).await;
    assert!(
        out.ok(),
        "promtool check metrics failed:\nstdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------
// Logs and audit (the real binary: tracing is initialised once per process)
// ---------------------------------------------------------------------------

struct Child {
    child: std::process::Child,
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256_forms(token: &str) -> Vec<String> {
    use base64::Engine;
    use sha2::Digest;
    let d = sha2::Sha256::digest(token.as_bytes());
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        hex.clone(),
        hex.to_uppercase(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d),
        base64::engine::general_purpose::STANDARD.encode(d),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_audit_carry_no_secrets() {
    let smtp = smtp::start().await;
    let upstream = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = (
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
    );
    let d = dir.path().display();
    let audit_path = dir.path().join("audit.log");
    let stderr_path = dir.path().join("stderr.log");
    let config = format!(
        r#"
[server]
listen = "{listen}"
tls_listen = ""
admin_listen = "{admin}"
data_dir = "{d}/data"
grace_period_secs = 0

[mail]
transport = "smtp"
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
link_base_url = "https://gateway.test"

[log]
format = "json"
level = "debug"
audit_file = "{audit}"

[[routes]]
prefix = "/"
upstream = "{up}"
auth = "required"
scopes = ["read"]
"#,
        smtp_port = smtp.addr.port(),
        audit = audit_path.display(),
        up = upstream.url(),
    );
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("start the portcullis binary");
    let mut child = Child { child };

    // Ready when the admin listener answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http::request(admin, "GET", "/healthz", &[], None).await {
            if r.status == 200 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the binary did not start: {}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        if let Some(st) = child.child.try_wait().unwrap() {
            panic!(
                "the binary exited with {st}: {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    const UA: &str = "limits-audit-test/1.0";
    let call = |path: &'static str, body: Value, bearer: Option<String>| async move {
        let auth = bearer.map(|t| format!("Bearer {t}"));
        let mut h: Vec<(&str, &str)> =
            vec![("Content-Type", "application/json"), ("User-Agent", UA)];
        if let Some(a) = &auth {
            h.push(("Authorization", a));
        }
        let raw = body.to_string();
        http::request(listen, "POST", path, &h, Some(raw.as_bytes()))
            .await
            .unwrap()
    };

    let email = "audited@example.com";
    let new_password = "an entirely new secret phrase";
    let mut secrets: Vec<String> = vec![PASSWORD.into(), new_password.into()];

    let r = call(
        "/auth/register",
        json!({ "email": email, "password": PASSWORD, "password_confirm": PASSWORD }),
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let user_id = r.json()["user"]["id"].as_str().unwrap().to_string();
    let mails = smtp.wait_for(1, Duration::from_secs(15)).await;
    let verify = mails[0]
        .token_from_link("/auth/email/verify")
        .expect("verification link");
    secrets.push(verify.clone());
    let r = call("/auth/email/verify", json!({ "token": verify }), None).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let r = call(
        "/auth/login",
        json!({ "email": email, "password": "wrong password 1" }),
        None,
    )
    .await;
    assert_eq!(r.status, 401);
    let r = call(
        "/auth/login",
        json!({ "email": email, "password": PASSWORD }),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let access = r.json()["access_token"].as_str().unwrap().to_string();
    let refresh = r.json()["refresh_token"].as_str().unwrap().to_string();
    secrets.extend([access.clone(), refresh.clone()]);
    let r = call("/auth/refresh", json!({ "refresh_token": refresh }), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let access2 = r.json()["access_token"].as_str().unwrap().to_string();
    let refresh2 = r.json()["refresh_token"].as_str().unwrap().to_string();
    secrets.extend([access2.clone(), refresh2.clone()]);
    // A proxied request with the token.
    let r = http::get(listen, "/app/data", Some(&access2)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // An API key: created, used, revoked (issue 13); never logged.
    let r = call(
        "/auth/api-keys",
        json!({ "name": "audited key", "scopes": ["read"] }),
        Some(access2.clone()),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let key = r.json()["key"].as_str().unwrap().to_string();
    let key_id = r.json()["id"].as_str().unwrap().to_string();
    secrets.push(key.clone());
    for _ in 0..2 {
        let r = http::request(
            listen,
            "GET",
            "/app/data",
            &[("X-API-Key", &key), ("User-Agent", UA)],
            None,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let auth = format!("Bearer {access2}");
    let r = http::request(
        listen,
        "DELETE",
        &format!("/auth/api-keys/{key_id}"),
        &[("Authorization", &auth), ("User-Agent", UA)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204, "{}", r.text());
    let r = call(
        "/auth/logout",
        json!({ "refresh_token": refresh2 }),
        Some(access2.clone()),
    )
    .await;
    assert_eq!(r.status, 204);

    let r = call("/auth/password/reset", json!({ "email": email }), None).await;
    assert_eq!(r.status, 202);
    let reset = smtp
        .wait_for_match(Duration::from_secs(15), |m| {
            m.token_from_link("/auth/password/reset").is_some()
        })
        .await
        .token_from_link("/auth/password/reset")
        .expect("reset link");
    secrets.push(reset.clone());
    let r = call(
        "/auth/password/reset/confirm",
        json!({ "token": reset, "new_password": new_password, "new_password_confirm": new_password }),
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = call(
        "/auth/login",
        json!({ "email": email, "password": new_password }),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let a3 = r.json()["access_token"].as_str().unwrap().to_string();
    let r3 = r.json()["refresh_token"].as_str().unwrap().to_string();
    secrets.extend([a3, r3]);
    // Let the outbox log the "password changed" notice delivery too.
    smtp.wait_for_match(Duration::from_secs(15), |m| {
        m.subject().as_deref() == Some("Your password was changed")
    })
    .await;

    // SIGTERM: a graceful exit with status 0.
    let pid = child.child.id().to_string();
    let st = Command::new("kill")
        .arg("-TERM")
        .arg(&pid)
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");

    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    assert!(!stderr.trim().is_empty(), "nothing was logged");

    // No secret in any form.
    let mut forms: Vec<(String, String)> = Vec::new();
    for s in &secrets {
        forms.push((s.clone(), "plain".into()));
        for h in sha256_forms(s) {
            forms.push((h, "sha256".into()));
        }
        // The JWT signature alone.
        if s.matches('.').count() == 2 {
            forms.push((
                s.rsplit('.').next().unwrap().to_string(),
                "jwt signature".into(),
            ));
        }
    }
    for (needle, kind) in &forms {
        for (name, text) in [("stderr", &stderr), ("the audit file", &audit)] {
            if let Some(line) = text.lines().find(|l| l.contains(needle.as_str())) {
                let redacted: String = line
                    .replace(needle.as_str(), "<SECRET>")
                    .chars()
                    .take(400)
                    .collect();
                panic!("{name} holds a secret ({kind}) in: {redacted}");
            }
        }
    }

    // The main log is JSON, one object per line.
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a stderr line is not JSON ({e}): {line}"));
        assert!(v.get("timestamp").is_some(), "{line}");
    }

    // The audit file: one JSON line per auth event with the full context.
    let events: Vec<Value> = audit
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line not JSON ({e}): {l}"))
        })
        .collect();
    for v in &events {
        for k in [
            "timestamp",
            "event",
            "outcome",
            "user_id",
            "client_ip",
            "user_agent",
            "request_id",
        ] {
            assert!(v.get(k).is_some(), "audit line without {k}: {v}");
        }
        assert_eq!(v["client_ip"], "127.0.0.1", "{v}");
        assert_eq!(v["user_agent"], UA, "{v}");
        let rid = v["request_id"].as_str().unwrap();
        assert!(uuid::Uuid::parse_str(rid).is_ok(), "request id {rid}");
    }
    let find = |event: &str, outcome: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|v| v["event"] == event && v["outcome"] == outcome)
            .collect()
    };
    for (event, outcome, n) in [
        ("register", "success", 1),
        ("email_verify", "success", 1),
        ("login", "failure", 1),
        ("login", "success", 2),
        ("refresh", "success", 1),
        ("logout", "success", 1),
        ("password_reset_requested", "accepted", 1),
        ("password_reset", "success", 1),
        ("api_key_created", "success", 1),
        // Sampled: the first use per key and write interval.
        ("api_key_used", "success", 1),
        ("api_key_revoked", "success", 1),
    ] {
        let found = find(event, outcome);
        assert_eq!(found.len(), n, "audit events {event}/{outcome}: {audit}");
        for v in found {
            if event != "password_reset_requested" {
                assert_eq!(v["user_id"], user_id.as_str(), "user id of {event}: {v}");
            }
        }
    }
    // Audit events went to the audit file, not to stderr.
    assert!(
        !stderr.contains("\"target\":\"audit\""),
        "audit events leaked into stderr"
    );
    drop(child);
}

// ---------------------------------------------------------------------------
// Per-route limits on proxied traffic, keyed on the verified identity
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_rate_limit_is_per_verified_user_or_per_ip() {
    let routes = format!(
        "{DEFAULT_ROUTES}
[[routes]]
prefix = \"/limited\"
upstream = \"{{UP}}\"
auth = \"required\"
rate_per_minute = 3

[[routes]]
prefix = \"/open-limited\"
upstream = \"{{UP}}\"
auth = \"public\"
rate_per_minute = 2
"
    );
    let gw = TestGateway::start_with(Builder {
        routes,
        ..Default::default()
    })
    .await;
    let a = gw.signup("rate-a@example.com").await;
    let b = gw.signup("rate-b@example.com").await;
    let before = throttled(&gw.metrics().await, "route");

    // No token: 401, and it does not use anybody's budget.
    for _ in 0..5 {
        assert_eq!(gw.get("/limited/x", None).await.status, 401);
    }
    for i in 0..3 {
        let r = gw.get(&format!("/limited/{i}"), Some(&a.access)).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    let hits = gw.upstream.hits();
    let r = gw.get("/limited/3", Some(&a.access)).await;
    assert_eq!(assert_429(&r, "4th request of user A"), 60);
    assert_eq!(gw.upstream.hits(), hits, "a refused request is not proxied");
    // Another session of the same user shares the budget (keyed on sub)...
    let a2 = gw.signin("rate-a@example.com", PASSWORD).await;
    assert_429(
        &gw.get("/limited/4", Some(&a2.access)).await,
        "user A, new session",
    );
    // ...while another user from the same IP has their own.
    for i in 0..3 {
        let r = gw.get(&format!("/limited/b{i}"), Some(&b.access)).await;
        assert_eq!(r.status, 200, "user B request {i}: {}", r.text());
    }
    // Other routes are not limited.
    for _ in 0..5 {
        assert_eq!(gw.get("/other", Some(&a.access)).await.status, 200);
    }

    // Anonymous traffic on a public limited route is counted per client IP.
    assert_eq!(gw.get("/open-limited/1", None).await.status, 200);
    assert_eq!(gw.get("/open-limited/2", None).await.status, 200);
    assert_429(&gw.get("/open-limited/3", None).await, "anonymous 3rd");

    gw.clock.advance(30);
    assert_eq!(
        assert_429(&gw.get("/limited/5", Some(&a.access)).await, "after 30 s"),
        30
    );
    gw.clock.advance(30);
    assert_eq!(gw.get("/limited/6", Some(&a.access)).await.status, 200);
    assert_eq!(gw.get("/open-limited/4", None).await.status, 200);

    let after = throttled(&gw.metrics().await, "route");
    assert_eq!(
        after - before,
        4.0,
        "throttled{{route}} {before} -> {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_over_tls_is_cut_too() {
    let gw = TestGateway::start_with(Builder {
        extra: "[limits]\ndownstream_read_timeout_secs = 2\n".into(),
        ..Default::default()
    })
    .await;
    let config = http::tls_client_config(&gw.cert_path(), &["http/1.1"]).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost".to_string()).unwrap();
    let tcp = TcpStream::connect(gw.tls_addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    tls.write_all(b"GET /public/tls HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let started = Instant::now();
    // Meanwhile a complete TLS request is served.
    let r = http::tls_get(gw.tls_addr, "localhost", &gw.cert_path(), "/public/ok")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let closed = http::read_until_closed(&mut tls, Duration::from_secs(4)).await;
    assert!(closed.is_some(), "an unfinished header over TLS stays open");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(gw.upstream.hits(), 1);
}

/// Issue 20, hole 9 (sled): four wrong guesses, then a flood of 112,000
/// email resends from distinct client addresses (each counts against its
/// client's IP budget and its address's budget: 224,000 other keys, more
/// than the in-memory counter map holds), then five more wrong guesses.
/// The flood must not reset the account's failure count: the fifth guess
/// in all locks the account and the rest get 429. The flood is counted
/// through the gateway's own store (as the resend handler counts it: 8 s of
/// traffic); the guesses and the lockout go through the real login
/// endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_other_addresses_does_not_reset_the_lockout() {
    use portcullis::clock::Clock;
    let gw = TestGateway::start_with(Builder {
        extra: "[throttle]\nauth_per_minute = 0\nmax_failed_logins = 5\nlockout_secs = 300\n"
            .into(),
        ..Default::default()
    })
    .await;
    gw.signup("victim@example.com").await;
    for i in 0..4 {
        let r = gw
            .login("victim@example.com", &format!("wrong guess {i}"))
            .await;
        assert_error(&r, 401, "invalid_credentials");
    }
    let store = gw.handle().auth.store.clone();
    const FLOOD: u32 = 112_000;
    for i in 0..FLOOD {
        // 14,000 requests a second for 8 s.
        if i % 14_000 == 0 {
            gw.clock.advance(1);
        }
        let now = gw.clock.now();
        let ip = format!(
            "ip:10.{}.{}.{}/32",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        );
        let by_ip = store.hit_counter(&ip, 20, 60, now).await.unwrap();
        let by_address = store
            .hit_counter(&format!("resend:flood{i}@example.com"), 3, 900, now)
            .await
            .unwrap();
        assert!(by_ip.is_ok() && by_address.is_ok(), "request {i} counted");
    }
    let mut statuses = Vec::new();
    for i in 4..9 {
        let r = gw
            .login("victim@example.com", &format!("wrong guess {i}"))
            .await;
        statuses.push(r.status);
    }
    assert_eq!(
        statuses,
        [401, 429, 429, 429, 429],
        "only the fifth guess in all is evaluated"
    );
    let r = gw.login("victim@example.com", PASSWORD).await;
    assert_429(&r, "the right password while locked");
}
