//! What passes between client and upstream unchanged (statuses, response
//! headers, large bodies both ways), and what the gateway answers when the
//! upstream fails: refused, dropped, cut off mid-response, too slow to
//! connect or to answer.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::http::{self, Response};
use crate::common::*;

/// Public routes onto the upstream's special paths (routes do not strip
/// their prefix, so each special path gets its own).
fn routes() -> String {
    let mut routes = DEFAULT_ROUTES.to_string();
    for p in ["/__status", "/__drop", "/__bytes", "/__slow", "/__cut"] {
        routes.push_str(&format!(
            "\n[[routes]]\nprefix = \"{p}\"\nupstream = \"{{UP}}\"\nauth = \"public\"\n"
        ));
    }
    routes
}

async fn gateway(extra: &str) -> TestGateway {
    TestGateway::start_with(Builder {
        routes: routes(),
        extra: extra.into(),
        ..Default::default()
    })
    .await
}

#[track_caller]
fn assert_bad_gateway(r: &Response) {
    assert_error(r, 502, "bad_gateway");
    let t = r.text();
    assert!(
        !t.contains("127.0.0.1") && !t.to_lowercase().contains("error:"),
        "internals in a 502: {t}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_4xx_and_5xx_pass_through_unchanged() {
    let gw = gateway("").await;
    for code in [400u16, 401, 403, 404, 409, 418, 429, 500, 502, 503, 504] {
        let r = gw.get(&format!("/__status/{code}"), None).await;
        assert_eq!(r.status, code, "{r:?}");
        let v = r.json();
        // The upstream's own body, not a gateway error.
        assert_eq!(v["status"], code, "{r:?}");
        assert_eq!(v["upstream"], gw.upstream.addr.to_string(), "{r:?}");
        assert!(v.get("error").is_none(), "{r:?}");
        assert_eq!(
            r.header("x-upstream"),
            Some(gw.upstream.addr.to_string().as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_response_headers_reach_the_client_unchanged() {
    let gw = gateway("").await;
    let r = http::request(
        gw.addr,
        "GET",
        "/public/x",
        &[
            (
                "X-Echo-Response-Header",
                "Set-Cookie: a=1; Path=/; HttpOnly",
            ),
            ("X-Echo-Response-Header", "Set-Cookie: b=2"),
            ("X-Echo-Response-Header", "X-App-Thing: Mixed Case value"),
            ("X-Echo-Response-Header", "Cache-Control: max-age=60"),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.headers_all("set-cookie"),
        vec!["a=1; Path=/; HttpOnly", "b=2"],
        "{r:?}"
    );
    assert_eq!(r.headers_all("x-app-thing"), vec!["Mixed Case value"]);
    // The app's own caching decision stands: the gateway's no-store is for
    // the responses it writes itself.
    assert_eq!(r.headers_all("cache-control"), vec!["max-age=60"], "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mb_response_streams_through_intact() {
    let gw = gateway("").await;
    const N: usize = 10 * 1024 * 1024;
    let r = gw.get(&format!("/__bytes/{N}"), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), N);
    assert!(r.body.iter().all(|&b| b == b'a'));
}

/// Far more than the kernel buffers on both sides of a connection hold.
const BIG: usize = 64 * 1024 * 1024;

/// A GET of [`BIG`] bytes whose client reads nothing for 5 s (well past
/// the tests' 2 s write timeout), then drains: how many bytes arrived
/// before the gateway ended the connection, or `None` if it was still
/// open 20 s after the client read again.
async fn stalled_big_download(gw: &TestGateway) -> Option<usize> {
    let head = format!("GET /__bytes/{BIG} HTTP/1.1\r\nHost: x\r\n\r\n");
    let got = http::stalled_read(gw.addr, &head, Duration::from_secs(5)).await?;
    Some(got.len())
}

/// A client that asks for a large answer and then reads nothing (slow-read)
/// loses the connection once one write to it has made no progress for
/// `limits.downstream_write_timeout_secs`; before, the gateway held it (and
/// its upstream connection) for as long as the client liked. A client that
/// reads gets the whole answer under the same setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_at_the_write_timeout() {
    let gw = gateway("[limits]\ndownstream_write_timeout_secs = 2\n").await;
    const N: usize = BIG;
    // Had the gateway kept the connection, the whole body would arrive and
    // the keep-alive connection stay open.
    let got = stalled_big_download(&gw)
        .await
        .expect("still open 20 s after the client read again");
    assert!(
        got > 0 && got < N,
        "{got} bytes arrived of a {N}-byte body: the write timeout did not cut the connection"
    );

    const M: usize = 10 * 1024 * 1024;
    let r = gw.get(&format!("/__bytes/{M}"), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), M);
}

/// The write timeout is taken up by a reload (it is read per request):
/// a gateway started with 600 s, reloaded to 2 s, cuts a stalled reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_timeout_is_reloadable() {
    let mut gw = gateway("[limits]\ndownstream_write_timeout_secs = 600\n").await;
    let new = gw.toml.replacen(
        "downstream_write_timeout_secs = 600",
        "downstream_write_timeout_secs = 2",
        1,
    );
    assert_ne!(new, gw.toml);
    gw.write_toml(&new);
    let r = gw.admin_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["changed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "limits"),
        "{}",
        r.text()
    );
    const N: usize = BIG;
    let got = stalled_big_download(&gw)
        .await
        .expect("still open 20 s after the client read again: the reload was not taken up");
    assert!(got > 0 && got < N, "{got} of {N} bytes");
}

/// The same over HTTP/2: a client that grants no flow-control window for
/// the write timeout loses the stream short of the body; before, the
/// gateway waited for the window for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_stops_reading_is_cut_at_the_write_timeout() {
    let gw = gateway("[limits]\ndownstream_write_timeout_secs = 2\n").await;
    const N: usize = BIG;
    let (mut client, _conn) = h2_connect(&gw).await;
    let req = ::http::Request::get(format!(
        "https://localhost:{}/__bytes/{N}",
        gw.tls_addr.port()
    ))
    .body(())
    .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // No window released for well past the timeout.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut got = 0usize;
    let drained = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = body.data().await {
            let Ok(chunk) = chunk else { break };
            let _ = body.flow_control().release_capacity(chunk.len());
            got += chunk.len();
        }
    })
    .await;
    assert!(drained.is_ok(), "the stream was still open 20 s later");
    assert!(
        got < N,
        "all {got} bytes arrived: the write timeout did not cut the stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_reach_the_upstream_intact() {
    let gw = gateway("").await;
    let s = gw.signup("body@example.com").await;
    let auth = format!("Bearer {}", s.access);

    // A JSON body on a protected route.
    let json = serde_json::json!({ "a": [1, 2, 3], "b": "ü €" }).to_string();
    let r = http::request(
        gw.addr,
        "POST",
        "/api/things",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(json.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["body"], json.as_str());
    assert_eq!(echoed(&r, "content-type"), vec!["application/json"]);

    // 5 MB with a content-length.
    const N: usize = 5 * 1024 * 1024;
    let big: Vec<u8> = (0..N).map(|i| b'a' + (i % 26) as u8).collect();
    let r = http::request(
        gw.addr,
        "PUT",
        "/public/upload",
        &[("Content-Type", "application/octet-stream")],
        Some(&big),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body"].as_str().unwrap().as_bytes(), &big[..]);
    assert_eq!(echoed(&r, "content-length"), vec![N.to_string()]);

    // The same 5 MB chunked, in 64 KiB chunks.
    let mut chunked = Vec::new();
    for c in big.chunks(64 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        chunked.extend_from_slice(c);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = http::request(
        gw.addr,
        "POST",
        "/public/upload",
        &[("Transfer-Encoding", "chunked")],
        Some(&chunked),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body"].as_str().unwrap().as_bytes(), &big[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_drops_the_connection_is_a_502() {
    let gw = gateway("").await;
    let r = gw.get("/__drop", None).await;
    assert_bad_gateway(&r);
    // And one that is not there at all.
    let dead = free_port();
    let gw2 = TestGateway::start_with(Builder {
        routes: format!(
            "[[routes]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:{dead}\"\nauth = \"public\"\n"
        ),
        ..Default::default()
    })
    .await;
    assert_bad_gateway(&gw2.get("/x", None).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_cut_off_mid_response_closes_the_client_connection() {
    let gw = gateway("").await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /__cut/100000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(http::TIMEOUT, s.read_to_end(&mut got))
        .await
        .expect("the gateway kept the cut-off connection open")
        .ok();
    let text = String::from_utf8_lossy(&got);
    // The header was already on its way: the status stays, and the body ends
    // short of its announced length, so the client can tell.
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(300)]
    );
    let head_end = text.find("\r\n\r\n").unwrap() + 4;
    let announced: usize = text[..head_end]
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("content-length passed through");
    assert_eq!(announced, 200_000);
    assert!(
        got.len() - head_end < announced,
        "a cut-off body looked whole"
    );
    // The gateway is fine afterwards.
    assert_eq!(gw.get("/__status/200", None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_slower_than_the_read_timeout_is_a_502_at_the_timeout() {
    let gw = gateway("[limits]\nupstream_read_timeout_secs = 1\n").await;
    let t = Instant::now();
    let r = gw.get("/__slow/4000", None).await;
    let took = t.elapsed();
    assert_bad_gateway(&r);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3000),
        "answered after {took:?}"
    );
    // Within the timeout is fine.
    assert_eq!(gw.get("/__slow/200", None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_cannot_be_connected_to_in_time_is_a_502_at_the_timeout() {
    // A listener with a full accept queue: the kernel drops further SYNs,
    // so a connect hangs until the gateway's connect timeout.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(c)) = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(c);
        }
    }
    let gw = TestGateway::start_with(Builder {
        routes: format!(
            "[[routes]]\nprefix = \"/\"\nupstream = \"http://{addr}\"\nauth = \"public\"\n"
        ),
        extra: "[limits]\nupstream_connect_timeout_secs = 1\n".into(),
        ..Default::default()
    })
    .await;
    let t = Instant::now();
    let r = gw.get("/x", None).await;
    let took = t.elapsed();
    assert_bad_gateway(&r);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3500),
        "answered after {took:?}"
    );
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_metrics_count_each_request_once_by_route_and_status() {
    let gw = gateway("").await;
    let m0 = gw.metrics().await;
    assert_eq!(gw.get("/public/x", None).await.status, 200);
    assert_eq!(gw.get("/__status/503", None).await.status, 503);
    assert_eq!(gw.get("/__status/404", None).await.status, 404);
    assert_bad_gateway(&gw.get("/__drop", None).await);
    assert_eq!(gw.get("/x", None).await.status, 401);
    assert_eq!(gw.login("nobody@example.com", PASSWORD).await.status, 401);
    // Pingora's `logging` hook records a request after its response is
    // written, so the client can scrape before the last one is counted:
    // wait until all six are (bounded), then check each.
    let total = |m: &str| -> f64 {
        m.lines()
            .filter(|l| l.starts_with("portcullis_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let m1 = loop {
        let m = gw.metrics().await;
        if total(&m) - total(&m0) >= 6.0 || std::time::Instant::now() >= deadline {
            break m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let d = |name: &str| metric(&m1, name) - metric(&m0, name);
    let requests = |route: &str, class: &str| {
        d(&format!(
            "portcullis_requests_total{{route=\"{route}\",status=\"{class}\"}}"
        ))
    };
    assert_eq!(requests("/public", "2xx"), 1.0);
    assert_eq!(requests("/__status", "5xx"), 1.0);
    assert_eq!(requests("/__status", "4xx"), 1.0);
    assert_eq!(requests("/__drop", "5xx"), 1.0);
    assert_eq!(requests("/", "4xx"), 1.0);
    assert_eq!(requests("/", "2xx"), 0.0);
    assert_eq!(requests("auth", "4xx"), 1.0);
    let count = |family: &str, route: &str| d(&format!("{family}_count{{route=\"{route}\"}}"));
    for (route, n) in [
        ("/public", 1.0),
        ("/__status", 2.0),
        ("/__drop", 1.0),
        ("/", 1.0),
    ] {
        assert_eq!(
            count("portcullis_request_duration_seconds", route),
            n,
            "request duration {route}"
        );
    }
    // Only requests that went upstream have an upstream duration.
    for (route, n) in [("/public", 1.0), ("/__status", 2.0), ("/", 0.0)] {
        assert_eq!(
            count("portcullis_upstream_duration_seconds", route),
            n,
            "upstream duration {route}"
        );
    }
    // An upstream's own 5xx is an answer, not an upstream error.
    for (route, n) in [("/__drop", 1.0), ("/__status", 0.0), ("/public", 0.0)] {
        assert_eq!(
            d(&format!(
                "portcullis_upstream_errors_total{{route=\"{route}\"}}"
            )),
            n,
            "upstream errors {route}"
        );
    }
}
