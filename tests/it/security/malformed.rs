//! Requests Pingora's HTTP/1 parser rejects before any hook of ours runs
//! (CWE-20 improper input validation; CONTRACT "every error is
//! `{"error", "message"}`"): a broken request line, a header line without a
//! colon, a bad header name, a NUL in a value, an authority that differs
//! from `Host`, a header block over Pingora's 1 MB limit, and `CONNECT`.
//! Pingora answers these itself with an empty body; the gateway rewrites
//! that answer on the wire (`proxy::deadline`), so each one arrives as the
//! contract's JSON error, over plain TCP and TLS, and nothing is proxied.

use super::*;

const CASES: &[(&str, &[u8], u16, &str)] = &[
    (
        "garbage request line",
        b"GARBAGE\r\n\r\n",
        400,
        "bad_request",
    ),
    (
        "header without a colon",
        b"GET /public/x HTTP/1.1\r\nHost: a\r\nNoColonHere\r\n\r\n",
        400,
        "bad_request",
    ),
    (
        "space in a header name",
        b"GET /public/x HTTP/1.1\r\nHost: a\r\nBad Name: v\r\n\r\n",
        400,
        "bad_request",
    ),
    (
        "NUL in a header value",
        b"GET /public/x HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n",
        400,
        "bad_request",
    ),
    (
        "authority differs from Host",
        b"GET http://evil.example/public/x HTTP/1.1\r\nHost: a\r\n\r\n",
        400,
        "bad_request",
    ),
    (
        "CONNECT",
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
        405,
        "method_not_allowed",
    ),
];

fn check(what: &str, r: &http::Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{what}: {r:?}");
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{what}: {r:?}"
    );
    let v: Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{what}: the body is not JSON ({e}): {r:?}"));
    assert_eq!(v["error"], code, "{what}: {r:?}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {r:?}"
    );
    assert_eq!(
        v.as_object().unwrap().len(),
        2,
        "{what}: nothing else: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingoras_own_rejections_carry_the_json_error_shape() {
    let gw = TestGateway::start().await;
    for &(what, raw, status, code) in CASES {
        let r = http::send_raw(gw.addr, raw)
            .await
            .unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
        check(what, &r, status, code);
        let r = http::tls_send_raw(
            gw.tls_addr,
            "localhost",
            &gw.cert_path(),
            raw,
            &["http/1.1"],
        )
        .await
        .unwrap_or_else(|e| panic!("{what} (TLS): no answer: {e}"));
        check(&format!("{what} (TLS)"), &r.0, status, code);
    }
    // A header block over Pingora's 1 MB limit.
    let mut raw = b"GET /public/x HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    raw.extend(std::iter::repeat_n(b'v', (1 << 20) + 10));
    raw.extend_from_slice(b"\r\n\r\n");
    match http::send_raw(gw.addr, &raw).await {
        Ok(r) => check("1 MB header", &r, 400, "bad_request"),
        // Refused mid-upload: the reset may overtake the answer.
        Err(e) => eprintln!("1 MB header: connection closed ({e})"),
    }
    // After a good request on a keep-alive connection, a bad one is still
    // rewritten (the mark is per request), and good answers are untouched.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /public/ok HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    // The first answer (its body is a JSON object from the echo upstream).
    while !out.ends_with(b"}") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("the first answer")
            .unwrap();
        assert!(n > 0, "closed after the first request");
        out.extend_from_slice(&chunk[..n]);
    }
    s.write_all(b"GET /public/x HTTP/1.1\r\nHost: a\r\nNoColonHere\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the connection is closed after the bad request")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    let second = out.rfind("HTTP/1.1 400").unwrap_or_else(|| panic!("{out}"));
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let tail = &out[second..];
    assert!(tail.contains("application/json"), "{tail}");
    assert!(
        tail.ends_with(r#"{"error":"bad_request","message":"The request could not be parsed."}"#),
        "{tail}"
    );
    assert_eq!(gw.upstream.hits(), 1, "only the good request was proxied");
    let r = gw.get("/public/ok", None).await;
    assert_eq!(r.status, 200, "{r:?}");
}
