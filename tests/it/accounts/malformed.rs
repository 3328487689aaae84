//! Malformed input: a clear 4xx for every bad body, 413 above 64 KiB,
//! `Expect: 100-continue`.

use super::*;

struct Endpoint {
    method: &'static str,
    path: &'static str,
    bearer: bool,
    /// `{}` is a validation error here (else it is accepted).
    requires_fields: bool,
}

const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "POST",
        path: "/auth/register",
        bearer: false,
        requires_fields: true,
    },
    Endpoint {
        method: "POST",
        path: "/auth/login",
        bearer: false,
        requires_fields: true,
    },
    Endpoint {
        method: "POST",
        path: "/auth/refresh",
        bearer: false,
        requires_fields: true,
    },
    Endpoint {
        method: "POST",
        path: "/auth/logout",
        bearer: false,
        requires_fields: false,
    },
    Endpoint {
        method: "POST",
        path: "/auth/verify",
        bearer: false,
        requires_fields: true,
    },
    Endpoint {
        method: "POST",
        path: "/auth/password/change",
        bearer: true,
        requires_fields: true,
    },
    Endpoint {
        method: "PATCH",
        path: "/auth/me",
        bearer: true,
        requires_fields: false,
    },
];

/// (what, headers, body, expected status, expected code)
type BodyCase<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_a_clear_4xx_never_a_500() {
    let gw = gateway("").await;
    let s = gw.signup("yara@example.com").await;
    let auth = format!("Bearer {}", s.access);
    let json_ct = ("content-type", "application/json");

    let deep_ok_size = "[".repeat(60_000);
    let deep_huge = "[".repeat(100_000);
    let deep_objects = "{\"a\":".repeat(10_000);
    let wrong_types = json!({
        "email": 1, "password": true, "password_confirm": [], "refresh_token": {},
        "token": 5, "current_password": 1, "new_password": 2, "new_password_confirm": 3,
        "username": 7
    })
    .to_string();
    let cases: Vec<BodyCase> = vec![
        (
            "truncated JSON",
            vec![json_ct],
            b"{\"email\": ".to_vec(),
            400,
            "bad_request",
        ),
        (
            "not JSON",
            vec![json_ct],
            b"email=a@b.c&password=x".to_vec(),
            400,
            "bad_request",
        ),
        (
            "trailing garbage",
            vec![json_ct],
            b"{} {}".to_vec(),
            400,
            "bad_request",
        ),
        (
            "array",
            vec![json_ct],
            b"[1,2,3]".to_vec(),
            400,
            "bad_request",
        ),
        (
            "string",
            vec![json_ct],
            b"\"hello\"".to_vec(),
            400,
            "bad_request",
        ),
        ("null", vec![json_ct], b"null".to_vec(), 400, "bad_request"),
        (
            "non-UTF-8",
            vec![json_ct],
            b"{\"email\":\"\xff\xfe\xfd\",\"password\":\"\xc3\x28\"}".to_vec(),
            400,
            "bad_request",
        ),
        (
            "deep arrays",
            vec![json_ct],
            deep_ok_size.clone().into_bytes(),
            400,
            "bad_request",
        ),
        (
            "deep objects",
            vec![json_ct],
            deep_objects.clone().into_bytes(),
            400,
            "bad_request",
        ),
        (
            "deep and huge",
            vec![json_ct],
            deep_huge.clone().into_bytes(),
            413,
            "payload_too_large",
        ),
        (
            "text/plain",
            vec![("content-type", "text/plain")],
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "form",
            vec![("content-type", "application/x-www-form-urlencoded")],
            b"email=a".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "no content type",
            vec![],
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "json lookalike",
            vec![("content-type", "application/jsonp")],
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "wrong types",
            vec![json_ct],
            wrong_types.into_bytes(),
            400,
            "validation_failed",
        ),
    ];

    for ep in ENDPOINTS {
        for (what, headers, body, status, code) in &cases {
            let mut h = headers.clone();
            if ep.bearer {
                h.push(("authorization", auth.as_str()));
            }
            let r = raw(gw.addr, ep.method, ep.path, &h, Some(body)).await;
            assert!(r.status < 500, "{} {} {what}: {r:?}", ep.method, ep.path);
            assert_eq!(r.status, *status, "{} {} {what}: {r:?}", ep.method, ep.path);
            assert_error(&r, *status, code);
            assert!(
                !r.text().to_lowercase().contains("serde") && !r.text().contains("line "),
                "library text leaked: {r:?}"
            );
        }
        // Missing fields.
        let r = raw(
            gw.addr,
            ep.method,
            ep.path,
            &{
                let mut h = vec![json_ct];
                if ep.bearer {
                    h.push(("authorization", auth.as_str()));
                }
                h
            },
            Some(b"{}"),
        )
        .await;
        if ep.requires_fields {
            assert_error(&r, 400, "validation_failed");
        } else {
            // Logout without a refresh token ends nothing and answers as
            // always (idempotent); a profile patch with nothing in it
            // changes nothing and returns the profile.
            match ep.path {
                "/auth/logout" => assert_eq!(r.status, 204, "logout {{}}: {r:?}"),
                "/auth/me" => {
                    assert_eq!(r.status, 200, "PATCH /auth/me {{}}: {r:?}");
                    assert_eq!(r.json()["user"]["email"], "yara@example.com", "{r:?}");
                    assert_eq!(r.json()["user"]["username"], Value::Null, "{r:?}");
                }
                other => panic!("no expectation for {{}} on {other}"),
            }
        }
    }
    // A charset parameter is fine.
    let r = raw(
        gw.addr,
        "POST",
        "/auth/login",
        &[("content-type", "application/json; charset=utf-8")],
        Some(
            json!({ "email": "yara@example.com", "password": PASSWORD })
                .to_string()
                .as_bytes(),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    // The user's session survived all of that.
    assert_eq!(proxied(&gw, &s.access).await, 200);
    // The gateway is still healthy.
    let metrics = gw.metrics().await;
    assert!(!metrics.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_above_64_kib_are_refused_with_413() {
    let gw = gateway("").await;
    let json_ct = ("content-type", "application/json");

    // Exactly at the limit: read and handled (401: no such account).
    let mut at_limit =
        json!({ "email": "zack@example.com", "password": "whatever pw" }).to_string();
    at_limit.push_str(&" ".repeat(64 * 1024 - at_limit.len()));
    assert_eq!(at_limit.len(), 65_536);
    let r = raw(
        gw.addr,
        "POST",
        "/auth/login",
        &[json_ct],
        Some(at_limit.as_bytes()),
    )
    .await;
    assert_error(&r, 401, "invalid_credentials");

    // One byte over, with Content-Length.
    let mut over = at_limit.clone();
    over.push(' ');
    for path in [
        "/auth/login",
        "/auth/register",
        "/auth/refresh",
        "/auth/logout",
    ] {
        let r = raw(gw.addr, "POST", path, &[json_ct], Some(over.as_bytes())).await;
        assert_error(&r, 413, "payload_too_large");
    }
    // A large Content-Length is refused before the body arrives.
    let r = raw(
        gw.addr,
        "POST",
        "/auth/login",
        &[json_ct, ("content-length", "1000000000")],
        Some(b"{}"),
    )
    .await;
    assert_error(&r, 413, "payload_too_large");

    // Chunked: the limit holds without a Content-Length.
    let chunked = |payload: &[u8], chunk: usize| {
        let mut body = Vec::new();
        for c in payload.chunks(chunk) {
            body.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            body.extend_from_slice(c);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        body
    };
    let big = format!("{{\"email\":\"{}\"}}", "a".repeat(80 * 1024));
    for path in ["/auth/login", "/auth/register"] {
        let r = raw(
            gw.addr,
            "POST",
            path,
            &[json_ct, ("transfer-encoding", "chunked")],
            Some(&chunked(big.as_bytes(), 8 * 1024)),
        )
        .await;
        assert_error(&r, 413, "payload_too_large");
    }
    // A small chunked body is read normally.
    let small = json!({ "email": "zack@example.com", "password": "whatever pw" }).to_string();
    let r = raw(
        gw.addr,
        "POST",
        "/auth/login",
        &[json_ct, ("transfer-encoding", "chunked")],
        Some(&chunked(small.as_bytes(), 7)),
    )
    .await;
    assert_error(&r, 401, "invalid_credentials");
    // Still serving.
    assert_eq!(gw.register("zack@example.com", PASSWORD).await.status, 201);
}

/// Reads from `s` until `pred(bytes)` holds, or fails after `within`.
fn read_until(
    s: &mut std::net::TcpStream,
    within: Duration,
    pred: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    let deadline = Instant::now() + within;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !pred(&buf) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no answer within {within:?}; got {:?}",
            String::from_utf8_lossy(&buf)
        );
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    buf
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered() {
    let gw = gateway("").await;
    let addr = gw.addr;
    tokio::task::spawn_blocking(move || {
        let body = json!({ "email": "abe@example.com", "password": PASSWORD, "password_confirm": PASSWORD })
            .to_string();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let head = format!(
            "POST /auth/register HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        // The interim answer comes without the body being sent.
        let interim = read_until(&mut s, Duration::from_secs(2), |b| contains(b, b"\r\n\r\n"));
        assert!(
            interim.starts_with(b"HTTP/1.1 100"),
            "expected 100 Continue, got {:?}",
            String::from_utf8_lossy(&interim)
        );
        s.write_all(body.as_bytes()).unwrap();
        let rest = read_until(&mut s, Duration::from_secs(10), |b| contains(b, b"\"user\""));
        let text = String::from_utf8_lossy(&rest);
        assert!(text.contains("HTTP/1.1 201"), "{text}");

        // Too large: the final 413 comes at once, no body needed.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let head = format!(
            "POST /auth/login HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        let answer = read_until(&mut s, Duration::from_secs(2), |b| contains(b, b"payload_too_large"));
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    })
    .await
    .unwrap();
    gw.signin("abe@example.com", PASSWORD).await;
}
