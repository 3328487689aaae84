//! HTTP request smuggling over a raw TCP client (CWE-444; ASVS 4.0.3
//! V1.14.x; RFC 9112 §6.1 and §11.2; h2c upgrade smuggling). Each request
//! hides a second, unauthenticated `GET /x` (a required route) after a
//! public one. Whatever the gateway answers, the upstream receives at most
//! the one public request, never the hidden one, and never both
//! `Content-Length` and `Transfer-Encoding`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const HIDDEN: &str = "GET /x HTTP/1.1\r\nHost: a\r\nX-Smuggled: 1\r\n\r\n";

/// Writes `raw`, reads until the gateway closes or goes quiet; returns
/// every status line it answered with.
async fn attack(gw: &TestGateway, raw: &str) -> Vec<u16> {
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let _ = s.write_all(raw.as_bytes()).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    // Give a desynchronized upstream connection time to show a 2nd request.
    tokio::time::sleep(Duration::from_millis(300)).await;
    String::from_utf8_lossy(&got)
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| {
            let text = String::from_utf8_lossy(&got).to_string();
            text.get(i + 9..i + 12).and_then(|c| c.parse().ok())
        })
        .collect()
}

#[track_caller]
fn assert_not_smuggled(gw: &TestGateway, statuses: &[u16], what: &str) {
    let reqs = gw.upstream.requests();
    assert!(
        reqs.len() <= 1,
        "{what}: upstream got {} requests: {reqs:?}",
        reqs.len()
    );
    for r in &reqs {
        let path = r["path"].as_str().unwrap_or_default();
        assert!(path.starts_with("/public"), "{what}: upstream got {path}");
        assert!(
            echoed_in(r, "x-smuggled").is_empty(),
            "{what}: smuggled: {r}"
        );
        let cl = echoed_in(r, "content-length");
        let te = echoed_in(r, "transfer-encoding");
        assert!(
            cl.is_empty() || te.is_empty(),
            "{what}: upstream got CL and TE: {r}"
        );
        assert!(
            cl.len() <= 1 && te.len() <= 1,
            "{what}: repeated framing headers: {r}"
        );
    }
    assert!(
        statuses.iter().all(|s| *s < 500),
        "{what}: gateway answered {statuses:?}"
    );
    // A smuggled `/x` the gateway itself parsed must have been refused.
    eprintln!(
        "{what}: statuses {statuses:?}, upstream requests {}",
        reqs.len()
    );
}

fn post(framing: &str, body: &str) -> String {
    format!("POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\n{framing}\r\n{body}")
}

/// CL.TE (CWE-444, the classic Watchfire/PortSwigger desync): both
/// `Content-Length` and `Transfer-Encoding: chunked`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_cl_te() {
    let gw = TestGateway::start().await;
    let body = format!("0\r\n\r\n{HIDDEN}");
    let raw = post(
        &format!(
            "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
            body.len()
        ),
        &body,
    );
    let st = attack(&gw, &raw).await;
    assert_not_smuggled(&gw, &st, "CL.TE");
    // TE.CL ordering: the short Content-Length names only the chunk header.
    gw.upstream.reset();
    let raw = post("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", &body);
    let st = attack(&gw, &raw).await;
    assert_not_smuggled(&gw, &st, "TE.CL");
}

/// TE.TE with two `Transfer-Encoding` headers (CWE-444): one proxy honours
/// the first, another the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_duplicate_transfer_encoding() {
    let gw = TestGateway::start().await;
    let body = format!("0\r\n\r\n{HIDDEN}");
    for framing in [
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: xchunked\r\n",
        "Transfer-Encoding : chunked\r\n",
        "Transfer-Encoding:\tchunked\r\n",
    ] {
        gw.upstream.reset();
        let st = attack(&gw, &post(framing, &body)).await;
        assert_not_smuggled(&gw, &st, framing);
    }
}

/// `Transfer-Encoding: chunked, identity` (RFC 9112 §6.1: chunked must be
/// the final coding, else the length is unknown and the request is 400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_chunked_then_identity() {
    let gw = TestGateway::start().await;
    let body = format!("0\r\n\r\n{HIDDEN}");
    for framing in [
        "Transfer-Encoding: chunked, identity\r\n",
        "Transfer-Encoding: identity, chunked\r\n",
        "Transfer-Encoding: gzip\r\n",
    ] {
        gw.upstream.reset();
        let st = attack(&gw, &post(framing, &body)).await;
        assert_not_smuggled(&gw, &st, framing);
    }
}

/// A bare LF inside a chunk extension ("funky chunks", CVE-2023-44488
/// class; RFC 9112 §7.1.1 allows only CRLF line ends there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_lf_in_chunk_extension() {
    let gw = TestGateway::start().await;
    for body in [
        format!("2;ext\nxx\r\n0\r\n\r\n{HIDDEN}"),
        format!("2;a=\"\n\"\r\nxx\r\n0\r\n\r\n{HIDDEN}"),
        format!("2\nxx\n0\n\n{HIDDEN}"),
        format!("0;ext\n\r\n\r\n{HIDDEN}"),
    ] {
        gw.upstream.reset();
        let st = attack(&gw, &post("Transfer-Encoding: chunked\r\n", &body)).await;
        assert_not_smuggled(&gw, &st, &format!("{body:?}"));
    }
}

/// HTTP/1.0 with a body (no keep-alive, length by `Content-Length`): the
/// body is data, never a second request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_http10_with_body() {
    let gw = TestGateway::start().await;
    let raw = format!(
        "POST /public/x HTTP/1.0\r\nHost: a\r\nContent-Length: {}\r\n\r\n{HIDDEN}",
        HIDDEN.len()
    );
    let st = attack(&gw, &raw).await;
    assert_not_smuggled(&gw, &st, "HTTP/1.0 body");
    let reqs = gw.upstream.requests();
    assert_eq!(reqs.len(), 1, "the public request itself is served");
    assert_eq!(reqs[0]["body"], HIDDEN, "the body arrives as data");
    // Without a length: the body is read to close, or refused; never parsed.
    gw.upstream.reset();
    let raw = format!("POST /public/x HTTP/1.0\r\nHost: a\r\n\r\n{HIDDEN}");
    let st = attack(&gw, &raw).await;
    assert_not_smuggled(&gw, &st, "HTTP/1.0 no length");
}

/// h2c upgrade smuggling (Bishop Fox 2020; RFC 9113 §3.1 removed the
/// upgrade): an `Upgrade: h2c` request would turn the connection into an
/// HTTP/2 tunnel whose streams the gateway never checks. It is refused with
/// 400 `bad_request`, on any route, and nothing reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_h2c_upgrade_is_refused() {
    let gw = TestGateway::start().await;
    for (upgrade, conn) in [
        ("h2c", "Upgrade, HTTP2-Settings"),
        ("H2C", "upgrade"),
        ("websocket, h2c", "Upgrade"),
    ] {
        let r = get_with(
            &gw,
            "/public/x",
            &[
                ("Upgrade", upgrade),
                ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
                ("Connection", conn),
            ],
        )
        .await;
        assert_error(&r, 400, "bad_request");
    }
    // Then the HTTP/2 preface and a stream for /x on the same connection.
    let raw = "GET /public/x HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\
               HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n\
               PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let st = attack(&gw, raw).await;
    assert_eq!(st.first(), Some(&400), "{st:?}");
    assert_eq!(gw.upstream.hits(), 0);
}
